"""Figures and tables computed from traces alone (`decoding.trace.Trace`); nothing here calls a model.

One concept per module: `heatmaps` (acceptance on the token grid), `steps` (per forward pass, by
depth, replay), `codebook` (projections, per-code statistics, nearest codes), `compare` (decoders
side by side), `ambiguity` (target top-1 probability and entropy), `sweeps` (hyperparameter sweeps),
`static` (matplotlib exports), `definitions` (the captions), `style` (colours and layout).
"""
