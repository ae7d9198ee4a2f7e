"""Folder runs: ``segkit predict`` over a source (run), its outputs and manifest (writers), and
sharding the images over processes (sharding).

Above the engine and io: it feeds decoded images to the Predictor and writes what comes back.
"""
