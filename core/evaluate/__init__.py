"""Accuracy: a class raster scored against reference labels, and a model scored on scenes.

``references`` opens the reference (a class raster or polygons) on the
prediction's grid; ``mask`` scores a class raster block by block
(``evaluate``, ``Evaluation``); ``model`` segments scenes with a model and
scores the masks (``evaluate_model``, ``evaluate_model_on_dataset``).
"""
