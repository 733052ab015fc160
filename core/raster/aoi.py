"""Areas of interest: polygons from a vector file, placed on a raster's grid.

``read_aoi`` reads the polygons of a layer (any CRS) into the raster's CRS;
``AreaOfInterest`` tells which pixels of a window of that raster they cover.
Training ignores labels outside them (``datasets.TrainingScene``); segmenting
crops to their bounding box and writes nodata outside them (``segment``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GlnetError


@dataclass(frozen=True)
class AoiWording:
    """``read_aoi``'s errors in its caller's words (``str.format`` templates of ``path``,
    and of ``exc`` where there is one). ``not_found`` None: a missing file is left to
    fiona, and so to ``unreadable``."""

    not_found: str | None = "{path}: area-of-interest file not found"
    unreadable: str = "{path}: cannot read areas of interest ({exc})"
    empty: str = "{path}: no polygons to use as areas of interest"


def read_aoi(path: str | Path, crs, layer: str | None = None, warnings: list[str] | None = None,
             wording: AoiWording = AoiWording()) -> list:
    """The polygons of ``layer`` (default: the first) of ``path`` as shapely geometries in
    ``crs`` (the raster's rasterio CRS, or None).

    Features other than polygons are left out, and invalid polygons are
    repaired (``buffer(0)``). A layer in degrees whose coordinates are not
    degrees (GeoJSON without a CRS is WGS 84 by its specification) is an
    error. Without a raster CRS the coordinates are taken as they are, which
    is noted in ``warnings``.
    """
    import fiona
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    path = Path(path)
    if wording.not_found is not None and not path.exists():
        raise GlnetError(wording.not_found.format(path=path))
    try:
        with fiona.open(path, layer=layer) as src:
            vcrs = src.crs
            geoms = [shape(f.geometry) for f in src if f.geometry is not None]
    except Exception as exc:  # fiona raises several types for unreadable files
        raise GlnetError(wording.unreadable.format(path=path, exc=exc)) from None
    geoms = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon") and not g.is_empty]
    if not geoms:
        raise GlnetError(wording.empty.format(path=path))
    if vcrs and crs is not None:
        vcrs = CRS.from_user_input(vcrs)
        if vcrs.is_geographic:
            x0, y0, x1, y1 = (f(v) for f, v in zip((min, min, max, max),
                                                   zip(*(g.bounds for g in geoms))))
            if not (-360 <= x0 and x1 <= 360 and -90 <= y0 and y1 <= 90):
                raise GlnetError(f"{path}: coordinates up to {max(abs(x0), abs(x1), abs(y0), abs(y1)):.6g} "
                                 f"are not degrees of its CRS {vcrs.to_string()} (GeoJSON without "
                                 "a CRS is WGS 84): give the file its CRS (ogr2ogr -a_srs)")
        if vcrs != crs:
            try:
                geoms = [shape(transform_geom(vcrs, crs, mapping(g))) for g in geoms]
            except Exception as exc:  # PROJ errors come as several types
                raise GlnetError(f"{path}: cannot transform the areas of interest to the "
                                 f"scene's CRS ({exc})") from None
    elif vcrs and warnings is not None:
        warnings.append("the scene has no CRS; area-of-interest coordinates taken as pixels' map "
                        "coordinates")
    return [g.buffer(0) if not g.is_valid else g for g in geoms]


class AreaOfInterest:
    """Polygons in a raster's CRS, asked which pixels of a window they cover.

    A window is given by its own transform (pixel (0, 0) at its corner; see
    ``ground.window_transform``) and its shape, so any grid of the raster's
    CRS will do (a resampled work grid, say), rotated ones included.
    """

    def __init__(self, geoms: Sequence) -> None:
        from shapely import STRtree

        self.geoms = list(geoms)
        self.tree = STRtree(self.geoms)

    def _hits(self, transform, shape: tuple[int, int]) -> np.ndarray:
        from shapely.geometry import Polygon

        h, w = shape
        t = transform
        footprint = Polygon([t @ (0, 0), t @ (w, 0), t @ (w, h), t @ (0, h)])
        return self.tree.query(footprint, predicate="intersects")

    def touches(self, transform, shape: tuple[int, int]) -> bool:
        """Whether any polygon meets the window (a window that none meets can be skipped)."""
        return len(self._hits(transform, shape)) > 0

    def mask(self, transform, shape: tuple[int, int], all_touched: bool = False) -> np.ndarray:
        """True where a pixel's centre lies inside a polygon (with ``all_touched``: where the
        pixel touches one)."""
        from rasterio.features import rasterize

        shapes = [self.geoms[i] for i in self._hits(transform, shape)]
        if not shapes:
            return np.zeros(shape, dtype=bool)
        return rasterize(shapes, out_shape=shape, transform=transform, fill=0, default_value=1,
                         dtype="uint8", all_touched=all_touched).astype(bool)
