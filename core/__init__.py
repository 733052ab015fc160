"""glnet: the headless engine of glnet-qgis.

GLNet (Chen et al., CVPR 2019) for georeferenced rasters. Data flows one way:
raster windows -> tensors -> model -> probabilities -> mask blocks -> polygons.
Importing this package does no work and loads neither torch nor GDAL.
"""

__version__ = "0.1.0"
