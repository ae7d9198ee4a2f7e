"""The prediction engine: the tiler and its blend windows, the torch and onnxruntime backends, the
Predictor, the typed predict options, labels and uncertainty maps from probabilities.

It knows the model card and loads weights through :mod:`segkit.bundle`; it reads pixels through
:mod:`segkit.io` and imports nothing above itself (no pipeline, export, training or CLI module).
"""
