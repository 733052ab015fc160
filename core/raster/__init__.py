"""Rasters on disk and in memory: window grids and readers, labels, tensors, masks."""
