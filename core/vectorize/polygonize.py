"""Streamed polygonization: a mask's polygons strip by strip, merged across the seams.

``regions`` reads the mask in strips of ``block_size`` rows and polygonizes
each with GDAL's polygonize (4-connected, as ``gdal_polygonize``'s default)
in pixel coordinates of the whole mask, where every vertex is an exact
integer. With a tolerance or smoothing each strip is simplified as a coverage
(``glnet.vectorize.simplify``) before the polygons cut by its seams are merged
(``glnet.vectorize.seams``). Memory therefore holds one strip, its polygons,
and the polygons still open across the last seam, never the mask's whole
polygon set. The exact result equals ``gdal_polygonize`` on the same mask,
for any strip height.

Measured on land-cover-like masks 10,000 columns wide (145,249 polygons per
100 MP; benchmarks/vectorize_scale.py): strips of 512 rows peak at 421 MiB for
100 MP and 504 MiB for 200 MP; GDAL's polygonize of the whole band streamed
from the file (rasterio keeps every polygon in an OGR memory layer until the
last is found) at 493 and 788 MiB, growing with the mask; whole-mask arrays
(``block_size=0``) at 2,441 MiB for 100 MP. Time is about that of
``gdal_polygonize`` itself (47 s against 53 s at 100 MP).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..config import VectorizeOptions
from ..contract import ProgressFn
from ..raster.ground import Ground
from .seams import Seams
from .sieve import read_strips
from .simplify import simplify_strip


def polygonize_strip(data: np.ndarray, valid: np.ndarray, row0: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """GDAL polygonize (4-connected) of one strip, in pixel coordinates of the whole mask."""
    from affine import Affine
    from rasterio.features import shapes

    coords: list = []
    ring_sizes: list[int] = []
    ring_counts: list[int] = []
    values: list[int] = []
    for geom, value in shapes(data, mask=valid, connectivity=4,
                              transform=Affine.translation(0, row0)):
        rings = geom["coordinates"]
        ring_counts.append(len(rings))
        for ring in rings:
            coords.extend(ring)
            ring_sizes.append(len(ring))
        values.append(value)
    return _build_polygons(np.array(coords, dtype=float).reshape(-1, 2), ring_sizes,
                           ring_counts), np.array(values, dtype=np.int64)


def _build_polygons(coords: np.ndarray, ring_sizes, ring_counts) -> np.ndarray:
    """Polygons from concatenated ring coordinates, ring sizes and rings per polygon."""
    import shapely

    if len(ring_counts) == 0:
        return np.empty(0, dtype=object)
    ring_index = np.repeat(np.arange(len(ring_sizes)), ring_sizes)
    rings = shapely.linearrings(coords, indices=ring_index)
    return shapely.polygons(rings, indices=np.repeat(np.arange(len(ring_counts)), ring_counts))

def _row_owners(values: np.ndarray, valid: np.ndarray, y: int, tree) -> np.ndarray:
    """For each pixel of a row: the index of the polygon holding it, or -1 (not polygonized)."""
    import shapely

    w = len(values)
    change = np.flatnonzero((values[1:] != values[:-1]) | (valid[1:] != valid[:-1])) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [w]]))
    owner = np.full(len(starts), -1, dtype=np.int64)
    runs = np.flatnonzero(valid[starts])
    if len(runs):
        points = shapely.points(starts[runs] + 0.5, np.full(len(runs), y + 0.5))
        found, poly = tree.query(points, predicate="within")
        owner[runs[found]] = poly
    return np.repeat(owner, lengths)


def regions(ds, options: VectorizeOptions, ground: Ground, sieved: Path | None = None,
            progress: ProgressFn | None = None, span: tuple[float, float] = (0.0, 1.0)
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Finished polygons of a mask, strip by strip: ``(class values, polygons in pixel coords)``.

    ``progress(fraction)`` is called after each strip, the fraction going
    through ``span`` with the rows done.
    """
    import shapely

    tolerance = options.simplify
    keep = None if options.class_ids is None else np.array(sorted(options.class_ids))
    coverage = tolerance > 0 or options.smooth > 0
    h = ds.height
    seams = Seams(np.arange(options.block_size, h, options.block_size or h))
    for r0, data, valid in read_strips(ds, options.block_size, sieved):
        rows = data.shape[0]
        if keep is not None and not coverage:
            valid &= np.isin(data, keep)
        raw, values = polygonize_strip(data, valid, r0)
        tree = shapely.STRtree(raw)
        first = r0 > 0
        last = r0 + rows >= h
        top = _row_owners(data[0], valid[0], r0, tree) if first else None
        bottom = _row_owners(data[-1], valid[-1], r0 + rows - 1, tree) if not last else None
        polys = simplify_strip(raw, ground, tolerance, options.smooth) if coverage else raw
        del raw, tree
        out_values, out_polys = seams.add(polys, values, top, data[0], bottom, data[-1])
        for v, p in zip(out_values, out_polys):
            if keep is not None and coverage:
                sel = np.isin(v, keep)
                v, p = v[sel], p[sel]
            if len(v):
                yield v, p
        if progress is not None:
            progress(span[0] + (span[1] - span[0]) * (r0 + rows) / h)
