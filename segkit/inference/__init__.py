"""Tiled, memory-bounded inference over torch or onnxruntime backends."""
