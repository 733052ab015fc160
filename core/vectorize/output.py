"""Writing the polygons: formats, output checks, features with their attributes, Shapefile moves.

The layer has the attributes ``class_id``, ``class_name``, ``area_m2`` and
``perimeter_m`` (``perim_m`` in a Shapefile, whose dBASE names have at most
10 characters); areas and perimeters come from ``ground.measure`` and are
left empty (None) where they are unknown (no CRS). Features are written
through fiona (GeoPackage, Shapefile, GeoJSON, FlatGeobuf) as they come,
strip by strip, never all at once; the caller writes them under a temporary
name and moves them into place at the end.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import FORMATS
from ..errors import GlnetError
from ..files import check_output_path
from ..modelfile import ClassInfo
from ..raster.ground import Ground, measure, to_world
from .classes import class_info

FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m")
# dBASE field names have at most 10 characters.
SHAPEFILE_FIELDS = ("class_id", "class_name", "area_m2", "perim_m")
# Every part a Shapefile may have (an existing one is replaced as a whole).
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")


@dataclass
class VectorizeResult:
    """What ``vectorize`` wrote."""

    path: Path
    driver: str
    layer: str
    features: int = 0
    counts: dict[int, int] = field(default_factory=dict)
    areas_m2: dict[int, float] = field(default_factory=dict)
    sieve_pixels: int = 0
    sieved_pixels: int = 0    # pixels the sieve gave to a neighbouring region
    warnings: list[str] = field(default_factory=list)


def driver_for(path: str | Path, driver: str | None = None) -> str:
    """The fiona driver for an output path: ``driver`` if given, else from the extension."""
    if driver is not None:
        if driver not in FORMATS:
            raise GlnetError(f"unknown format {driver!r}: use one of {', '.join(FORMATS)}")
        return driver
    ext = Path(path).suffix.lower()
    for name, exts in FORMATS.items():
        if ext in exts:
            return name
    raise GlnetError(f"{path}: cannot tell the format from the extension {ext or '(none)'}; "
                     f"use .gpkg, .shp, .geojson or .fgb, or give the format")


def check_output(path: Path, driver: str, overwrite: bool, mask: Path) -> None:
    """Refuse (``GlnetError``) an output that is ``mask`` or exists without ``overwrite``; for a
    Shapefile, any of its parts existing counts."""
    check_output_path(path, overwrite, inputs=[mask])
    if driver == "ESRI Shapefile" and not overwrite:
        for ext in _SHAPEFILE_PARTS:
            part = path.with_suffix(ext)
            if part.exists():
                raise GlnetError(f"{part}: already exists (use --overwrite to replace it)")


def write_features(path: Path, driver: str, layer: str, crs,
                   features: Iterable[tuple[np.ndarray, np.ndarray]], ground: Ground, known,
                   table, result: VectorizeResult) -> set[int]:
    """Write ``features`` (``(class values, polygons in pixel coordinates)`` in batches) to a
    new layer ``layer`` at ``path``; count them into ``result``. Returns the class values seen.

    ``crs`` (rasterio's, or None) is the layer's; ``known`` and ``table`` name the classes
    (see ``classes.mask_classes``).
    """
    import fiona

    names = SHAPEFILE_FIELDS if driver == "ESRI Shapefile" else FIELDS
    schema = {"geometry": "Polygon",
              "properties": {names[0]: "int", names[1]: "str", names[2]: "float",
                             names[3]: "float"}}
    kwargs = {"layer": layer} if driver == "GPKG" else {}
    if crs is not None:
        kwargs["crs_wkt"] = crs.to_wkt()
    seen: set[int] = set()
    infos: dict[int, ClassInfo] = {}
    with fiona.open(path, "w", driver=driver, schema=schema, **kwargs) as out:
        for values, polys in features:
            area, perimeter = measure(polys, ground)
            geometries = geojson_polygons(to_world(polys, ground.transform))
            records = []
            for v, g, a, p in zip(values.tolist(), geometries, area.tolist(), perimeter.tolist()):
                info = infos.get(v) or infos.setdefault(v, class_info(v, known, table))
                records.append({"geometry": g, "properties": {
                    names[0]: v, names[1]: info.name,
                    names[2]: None if math.isnan(a) else a,
                    names[3]: None if math.isnan(p) else p}})
                result.counts[v] = result.counts.get(v, 0) + 1
                if not math.isnan(a):
                    result.areas_m2[v] = result.areas_m2.get(v, 0.0) + a
            out.writerecords(records)
            result.features += len(records)
            seen.update(values.tolist())
    return seen

def geojson_polygons(polys: np.ndarray) -> list[dict]:
    """GeoJSON-like dicts of polygons (faster than ``mapping`` one by one)."""
    import shapely

    if len(polys) == 0:
        return []
    rings, owner = shapely.get_rings(polys, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    points = coords.tolist()
    bounds = np.r_[0, np.flatnonzero(ring_of[1:] != ring_of[:-1]) + 1, len(ring_of)].tolist()
    ring_lists = [points[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
    first = np.r_[0, np.flatnonzero(owner[1:] != owner[:-1]) + 1, len(owner)].tolist()
    return [{"type": "Polygon", "coordinates": ring_lists[s:e]}
            for s, e in zip(first[:-1], first[1:])]


def move_shapefile(tmp: Path, output: Path) -> None:
    """Move a finished Shapefile's parts from a work folder to ``output``'s folder."""
    for ext in _SHAPEFILE_PARTS:
        old = output.with_suffix(ext)
        if old.exists() and not tmp.with_suffix(ext).exists():
            old.unlink()
    for part in sorted(tmp.parent.iterdir()):
        if part.suffix != ".shp":
            os.replace(part, output.with_suffix(part.suffix))
    # the .shp last: its presence means the set is complete
    shutil.move(str(tmp), str(output))

