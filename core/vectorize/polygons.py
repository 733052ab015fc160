"""Vectorizing a class mask: read, sieve, polygonize in strips, simplify, write.

``vectorize(mask, output)`` turns a class raster of any size (the masks that
``glnet segment`` writes: one integer band, nodata, optional class names and
colours) into a polygon layer with the attributes ``class_id``, ``class_name``,
``area_m2`` and ``perimeter_m``. It is a straight line through the modules of
``glnet.vectorize``, each holding one step and its invariants:

1. ``sieve``: open and check the mask; sieve regions under ``min_pixels``
   (or ``min_area``) once on the whole mask into a temporary file (optional).
2. ``polygonize``: GDAL's polygonize in strips of ``block_size`` rows, the
   polygons cut by seams merged by ``seams``; equal to ``gdal_polygonize``
   for any strip height, memory bounded by one strip.
3. ``simplify``: coverage simplification and smoothing of each strip with
   its outer boundary fixed (optional; no gaps, overlaps or slivers).
4. ``output``: attributes from ``glnet.raster.ground.measure`` (planar in a
   projected CRS, on the ellipsoid in a geographic one, empty without a
   CRS), features written through fiona (GeoPackage, Shapefile, GeoJSON,
   FlatGeobuf) to a temporary name beside the output, renamed at the end;
   ``classes`` names and colours the values, and a GeoPackage gets QGIS's
   ``layer_styles`` table (``styles``) with a categorised renderer on
   ``class_id`` in the class colours, which QGIS applies on load.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..config import VectorizeOptions
from ..contract import ProgressFn, temp_prefix
from ..errors import OptionError
from ..files import atomic_output, full_disk_as_error
from ..modelfile import ClassInfo
from ..raster.ground import ground_of
from .classes import class_info, mask_classes
from .output import VectorizeResult, check_output, driver_for, move_shapefile, write_features
from .polygonize import regions
from .sieve import has_geotransform, open_mask, sieve_to_file
from .styles import write_layer_style

# QGIS's (and GDAL's drawing tools') grid for a raster without a geotransform: pixel
# (col, row) at x = col, y = -row. rasterio reports the identity instead, y = +row.
QGIS_PIXEL_FRAME = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
# GDAL's block cache while sieving and reading strips.
_GDAL_CACHE = 64 * 1024 * 1024
# Share of the progress bar given to the sieve (GDAL reports no progress of its own).
SIEVE_SHARE = 0.2


def vectorize(mask: str | Path, output: str | Path, options: VectorizeOptions | None = None,
              classes: Sequence[ClassInfo] | None = None,
              progress: ProgressFn | None = None) -> VectorizeResult:
    """Write the polygons of class raster ``mask`` to ``output`` (see the module's docstring).

    ``classes`` names and colours the class values (default: the mask's own,
    then "class N"). ``progress(fraction, message=None)`` (see ``glnet.progress``)
    is called before and after sieving and after each strip; an exception it
    raises (e.g. ``Cancelled``) stops the run and leaves nothing at ``output``.
    Warnings (a mask without CRS) are issued with ``warnings.warn`` and listed
    in the result.

    Raises ``GlnetError`` for inputs that cannot be vectorized (not a raster,
    several bands, float values, a CRS-less mask with a metric option that
    cannot be converted) and for an output that exists without ``overwrite``.
    """
    import rasterio
    from affine import Affine

    options = options or VectorizeOptions()
    mask, output = Path(mask), Path(output)
    driver = driver_for(output, options.driver)
    check_output(output, driver, options.overwrite, mask)
    layer = options.layer or output.stem
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE), open_mask(mask) as ds:
        pixels = ds.crs is None and not has_geotransform(mask)
        # Without a geotransform QGIS (like GDAL's tools that draw) puts pixel (col, row) at
        # x = col, y = -row; polygons in that frame lie on the mask and on its image in QGIS.
        ground = ground_of(ds.crs, Affine(*QGIS_PIXEL_FRAME) if pixels else ds.transform, ds.width,
                           ds.height)
        known, table, notes = mask_classes(ds, classes)
        absent = sorted(set(options.class_ids or ()) - set(known))
        if known and absent:
            raise OptionError(f"{mask}: classes {', '.join(map(str, absent))} are not among "
                              f"the mask's classes ({', '.join(map(str, sorted(known)))})")
        if pixels:
            notes.append(f"{mask}: not georeferenced; polygons are in pixel coordinates as QGIS "
                         "places the mask (x = column, y = -row), area_m2 and perimeter_m are "
                         "left empty, and --min-area and --simplify are read in pixels")
        elif ground.kind == "none":
            notes.append(f"{mask}: has no CRS; polygons are in its own coordinates, area_m2 "
                         "and perimeter_m are left empty, and --min-area and --simplify are "
                         "read in those units")
        for note in notes:
            warnings.warn(note, stacklevel=2)
        size = options.min_pixels or 0
        if options.min_area:
            size = math.ceil(options.min_area / ground.pixel_area - 1e-9)
        result = VectorizeResult(output, driver, layer, sieve_pixels=size if size > 1 else 0,
                                 warnings=notes)
        # (the disk check is left first, before the work folder and its space go)
        with tempfile.TemporaryDirectory(prefix=temp_prefix(output), suffix=".work",
                                         dir=output.parent) as work, full_disk_as_error(output):
            sieved = None
            span = (0.0, 1.0)
            if size > 1:
                if progress is not None:
                    progress(0.0, f"sieving regions under {size} px")
                sieved, result.sieved_pixels = sieve_to_file(ds, size, Path(work))
                span = (SIEVE_SHARE, 1.0)
                if progress is not None:
                    progress(SIEVE_SHARE)
            # Written under its own name in the work folder (GDAL drivers look at the
            # extension), then renamed into place: Shapefile parts one by one, a
            # single file through files.atomic_output.
            staged = Path(work) / "out" / output.name
            staged.parent.mkdir()
            seen = write_features(staged, driver, layer, ds.crs,
                                  regions(ds, options, ground, sieved, progress, span), ground,
                                  known, table, result)
            if driver == "GPKG":
                write_layer_style(staged, layer, [
                    class_info(v, known, table) for v in sorted(set(known) | seen)
                    if options.class_ids is None or v in options.class_ids])
            if driver == "ESRI Shapefile":
                move_shapefile(staged, output)
            else:
                with atomic_output(output, options.overwrite) as tmp:
                    os.replace(staged, tmp)
    return result

def summary(result: VectorizeResult) -> str:
    """One line about a finished run, for the CLI."""
    areas = f", {sum(result.areas_m2.values()) / 1e6:.4g} km²" if result.areas_m2 else ""
    sieve = ""
    if result.sieve_pixels:
        sieve = (f", regions under {result.sieve_pixels} px sieved ({result.sieved_pixels:,} px "
                 "given to their neighbours)" if result.sieved_pixels else
                 f", no regions under {result.sieve_pixels} px to sieve")
    n, k = result.features, len(result.counts)
    return (f"wrote {result.path}: {n} polygon{'s' * (n != 1)} in "
            f"{k} class{'es' * (k != 1)}{areas}{sieve}")



__all__ = ["QGIS_PIXEL_FRAME", "SIEVE_SHARE", "VectorizeResult", "summary", "vectorize"]
