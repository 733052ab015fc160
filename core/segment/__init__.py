"""Segmenting a scene: window probabilities blended into mask blocks, strips, Dask."""
