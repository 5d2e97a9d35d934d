"""SpecLens models: LlamaGen-compatible GPT and VQ tokenizer, checkpoints, the decoder-facing interface."""
