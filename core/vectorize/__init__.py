"""Polygons from class masks."""
