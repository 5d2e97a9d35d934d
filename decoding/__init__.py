"""SpecLens decoders: plain AR and speculative decoders behind one interface, one trace record."""
