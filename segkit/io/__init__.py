"""Pixels in and out of files: images and masks, windowed reads, class colours, what ``predict``
reads (sources, read-ahead) and the file formats it writes (pyramids, georeferencing).

The lowest layer above errors/utils/config: it imports no model, engine or pipeline module.
"""
