"""Polygons from class masks: sieve, streamed polygonization, coverage simplification.

``vectorize(mask, output)`` turns a class raster of any size (the masks that
``glnet segment`` writes: one integer band, nodata, optional class names and
colours) into a polygon layer with the attributes ``class_id``, ``class_name``,
``area_m2`` and ``perimeter_m``:

1. Sieve (optional). GDAL's sieve filter (``rasterio.features.sieve``) runs
   once on the whole mask, read from the file band and writing into a
   memory-mapped temporary file, so its memory is GDAL's per-region table
   (about 24 bytes a region) plus the OS's page cache, not an array of the
   mask. Nodata pixels are masked: they never grow into classes nor swallow
   them. A region smaller than the threshold takes the class of its largest
   neighbour.
2. Polygonize in strips of ``block_size`` rows (GDAL's polygonize, 4-connected
   as ``gdal_polygonize``'s default) in pixel coordinates, where every vertex
   is an exact integer. A polygon cut by the seam between two strips is
   found by the pixel runs on both sides of the seam (same class, a shared
   pixel edge) and merged by a union once no part of it touches the strip
   being read any more; all other polygons are written as soon as their strip
   is done. Memory therefore holds one strip, its polygons, and the polygons
   still open across the last seam, never the mask's whole polygon set. The
   result equals ``gdal_polygonize`` on the same mask, for any strip height.
   Measured on land-cover-like masks 10,000 columns wide (145,249 polygons
   per 100 MP; benchmarks/vectorize_scale.py): strips of 512 rows peak at
   421 MiB for 100 MP and 504 MiB for 200 MP; GDAL's polygonize of the whole
   band streamed from the file (rasterio keeps every polygon in an OGR memory
   layer until the last is found) at 493 and 788 MiB, growing with the mask;
   whole-mask arrays (``block_size=0``) at 2,441 MiB for 100 MP. Time is
   about that of ``gdal_polygonize`` itself (47 s against 53 s at 100 MP).
3. Simplify (optional), keeping a coverage. Each strip's polygons (a polygonal
   coverage: GDAL's output densified to one vertex per pixel corner so that
   neighbours share vertices) go through GEOS's coverage simplifier
   (``shapely.coverage_simplify``, Visvalingam-Whyatt on shared edges, each
   edge simplified once for both its polygons) with the coverage's outer
   boundary fixed: the strip's seams, the raster's border and the edges
   against nodata do not move. Shared edges stay shared, so there are no gaps,
   overlaps or slivers, and the polygons still cover exactly the valid pixels.
   The only trace of the strips is a vertex kept where an edge crosses a seam.
   Optional smoothing (Chaikin corner cutting, ``smooth`` iterations) works
   on the same edges with the same fixed boundary, and an edge whose smoothed
   line would cross another is left unsmoothed.
4. Attributes (``ground.measure``). Projected CRS: planar area and perimeter
   in the CRS's linear unit converted to metres. Geographic CRS: area on the
   ellipsoid, computed exactly in the cylindrical equal-area projection of
   the CRS's ellipsoid (pixel edges, which follow meridians and parallels,
   stay straight there); perimeter on the ellipsoid from the local radii of
   curvature of each segment (exact along parallels, meridian arcs to better
   than 1e-6).
   Without a CRS the polygons are in the raster's own coordinates and the two
   measures are left empty.
5. Write through fiona (GeoPackage, Shapefile, GeoJSON, FlatGeobuf) to a
   temporary name beside the output, renamed at the end. A GeoPackage also
   gets QGIS's ``layer_styles`` table with a categorised renderer on
   ``class_id`` in the class colours, which QGIS applies on load.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..config import FORMATS, VectorizeOptions
from ..contract import CLASSES_TAG, ProgressFn, category_qml, temp_prefix
from ..errors import GlnetError, OptionError
from ..files import atomic_output, check_output_path, full_disk_as_error
from ..modelfile import ClassInfo
from ..palette import default_colors
from ..raster.ground import Ground, ground_of, measure, to_world

FIELDS = ("class_id", "class_name", "area_m2", "perimeter_m")
# dBASE field names have at most 10 characters.
SHAPEFILE_FIELDS = ("class_id", "class_name", "area_m2", "perim_m")
_SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")
# Integer types GDAL's sieve and polygonize read directly.
_DTYPES = ("uint8", "uint16", "int16", "int32")
# QGIS's (and GDAL's drawing tools') grid for a raster without a geotransform: pixel
# (col, row) at x = col, y = -row. rasterio reports the identity instead, y = +row.
QGIS_PIXEL_FRAME = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
# GDAL's block cache while sieving and reading strips.
_GDAL_CACHE = 64 * 1024 * 1024
# Share of the progress bar given to the sieve (GDAL reports no progress of its own).
SIEVE_SHARE = 0.2


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


# --------------------------------------------------------------------------- classes

def mask_classes(dataset, classes: Sequence[ClassInfo] | None = None
                 ) -> tuple[dict[int, ClassInfo], dict[int, tuple[int, int, int]], list[str]]:
    """Class names and colours for a mask: ``(known classes, colour-table colours, warnings)``.

    ``classes`` (from the caller) wins; otherwise the mask's ``GLNET_CLASSES``
    tag (see ``glnet.raster.masks``); the mask's colour table gives colours of values
    without a class. Values known from neither are named "class N" and take
    ``palette.default_colors``.
    """
    notes: list[str] = []
    known: dict[int, ClassInfo] = {}
    if classes is not None:
        known = {int(c.value): c for c in classes}
    else:
        from ..raster.masks import read_classes

        try:
            stored = read_classes(dataset)
        except (ValueError, KeyError, TypeError) as exc:
            stored = None
            notes.append(f"{dataset.name}: ignoring its {CLASSES_TAG} tag ({exc}); "
                         "classes are named by value")
        known = {c.value: c for c in stored or ()}
    table: dict[int, tuple[int, int, int]] = {}
    try:
        table = {int(k): tuple(int(c) for c in v[:3]) for k, v in dataset.colormap(1).items()}
    except ValueError:  # no colour table
        pass
    return known, table, notes


def class_info(value: int, known: dict[int, ClassInfo],
               table: dict[int, tuple[int, int, int]]) -> ClassInfo:
    """The name and colour of class ``value`` (see ``mask_classes``)."""
    if value in known:
        return known[value]
    if value in table:
        color = table[value]
    elif value >= 0:
        color = default_colors(value + 1)[value]
    else:
        color = (128, 128, 128)
    return ClassInfo(value, f"class {value}", tuple(color))


# --------------------------------------------------------------------------- reading the mask

def open_mask(path: str | Path):
    """Open a class raster with rasterio, refusing what cannot be vectorized (``GlnetError``)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    path = Path(path)
    if not path.exists():
        raise GlnetError(f"{path}: mask not found")
    try:
        with warnings.catch_warnings():
            # a mask without georeferencing is reported by vectorize itself
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise GlnetError(f"{path}: not a raster GDAL can read ({exc})") from None
    problem = None
    dtype = ds.dtypes[0] if ds.count else None
    if ds.count != 1:
        problem = (f"has {ds.count} bands; vectorize needs a single-band class raster "
                   "(like the masks of glnet segment)")
    elif dtype.startswith(("float", "complex")):
        problem = (f"is a {dtype} raster; vectorize needs a class raster of integer class "
                   "values (like the masks of glnet segment), not probabilities or imagery")
    elif dtype not in _DTYPES:
        problem = (f"has {dtype} values; vectorize reads {', '.join(_DTYPES)} class rasters "
                   "(convert it, e.g. gdal_translate -ot Int32)")
    if problem:
        ds.close()
        raise GlnetError(f"{path}: {problem}")
    return ds


def has_geotransform(path: str | Path) -> bool:
    """Whether GDAL finds a geotransform, GCPs or RPCs in ``path`` (rasterio says identity
    either way; it warns when there is none)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NotGeoreferencedWarning)
        with rasterio.open(path):
            pass
    return not any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)


def _has_mask(ds) -> bool:
    from rasterio.enums import MaskFlags

    return ds.mask_flag_enums[0] != [MaskFlags.all_valid]


def _sieve(ds, size: int, workdir: Path) -> tuple[Path, int]:
    """Sieve ``ds``'s band 1 into a raw file (row-major, the band's dtype) in ``workdir``.

    Returns the file and how many pixels the sieve changed.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import sieve
    from rasterio.windows import Window

    h, w = ds.height, ds.width
    mask_band = None
    mask_ds = None
    try:
        if _has_mask(ds):
            # GDAL's sieve takes the validity mask as a band of its own: a 1-bit
            # per pixel temporary GeoTIFF (compressed), written strip by strip.
            mask_path = workdir / "valid.tif"
            profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", nbits=1,
                           tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                           zlevel=1, bigtiff="IF_SAFER")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(mask_path, "w", **profile) as out:
                    for r0 in range(0, h, 1024):
                        win = Window(0, r0, w, min(1024, h - r0))
                        out.write((ds.read_masks(1, window=win) != 0).astype(np.uint8), 1,
                                  window=win)
                mask_ds = rasterio.open(mask_path)
            mask_band = rasterio.band(mask_ds, 1)
        raw = workdir / "sieved.raw"
        out = np.memmap(raw, dtype=ds.dtypes[0], mode="w+", shape=(h, w))
        sieve(rasterio.band(ds, 1), min(size, h * w), out=out, mask=mask_band, connectivity=4)
        out.flush()
        changed = sum(int((ds.read(1, window=Window(0, r0, w, min(1024, h - r0)))
                           != out[r0:r0 + 1024]).sum()) for r0 in range(0, h, 1024))
        del out
    finally:
        if mask_ds is not None:
            mask_ds.close()
    return raw, changed


def _strips(ds, block: int, sieved: Path | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(first row, values, valid)`` for each strip of ``block`` rows (all rows if 0)."""
    from rasterio.windows import Window

    h, w = ds.height, ds.width
    step = block or h
    dtype = np.dtype(ds.dtypes[0])
    with open(sieved, "rb") if sieved is not None else nullcontext() as raw:
        for r0 in range(0, h, step):
            rows = min(step, h - r0)
            win = Window(0, r0, w, rows)
            if raw is not None:
                raw.seek(r0 * w * dtype.itemsize)
                data = np.fromfile(raw, dtype=dtype, count=rows * w).reshape(rows, w)
            else:
                data = ds.read(1, window=win)
            valid = ds.read_masks(1, window=win) != 0
            yield r0, data, valid


# --------------------------------------------------------------------------- polygonize a strip

def _polygonize(data: np.ndarray, valid: np.ndarray, row0: int) -> tuple[np.ndarray, np.ndarray]:
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


def _drop_collinear(polys: np.ndarray) -> np.ndarray:
    """Remove vertices that lie exactly on the straight line through their neighbours."""
    import shapely

    if len(polys) == 0:
        return polys
    rings, owner = shapely.get_rings(polys, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    closing = np.r_[ring_of[1:] != ring_of[:-1], True]  # each ring repeats its first vertex
    coords, ring_of = coords[~closing], ring_of[~closing]
    n = len(coords)
    idx = np.arange(n)
    starts = np.r_[0, np.flatnonzero(ring_of[1:] != ring_of[:-1]) + 1]
    ends = np.r_[starts[1:], n] - 1
    prev = idx - 1
    prev[starts] = ends
    nxt = idx + 1
    nxt[ends] = starts
    d1 = coords - coords[prev]
    d2 = coords[nxt] - coords
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    dot = (d1 * d2).sum(axis=1)
    keep = ~((cross == 0) & (dot > 0))
    sizes = np.bincount(ring_of[keep], minlength=len(rings))
    if (sizes < 3).any():  # a degenerate ring: leave everything as it was
        return polys
    rings = shapely.linearrings(coords[keep], indices=ring_of[keep])
    return shapely.polygons(rings, indices=owner)


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


def _simplify_strip(polys: np.ndarray, ground: Ground, tolerance: float,
                    smooth: int) -> np.ndarray:
    """Coverage-simplify and smooth a strip's polygons, its outer boundary fixed."""
    import shapely

    if len(polys) == 0:
        return polys
    # One vertex per pixel corner along every edge: neighbours then share vertices
    # (GDAL writes only corners), which the coverage simplifier requires.
    polys = shapely.segmentize(polys, 1.0)
    sx, sy = ground.pixel_width, ground.pixel_height
    scale = np.array([sx, sy])
    # Work in metres along the grid: isotropic even for geographic pixels.
    metric = shapely.transform(polys, lambda xy: xy * scale)
    if tolerance > 0:
        metric = shapely.coverage_simplify(metric, tolerance, simplify_boundary=False)
    if smooth:
        metric = smooth_coverage(metric, smooth)
    # Drop the densified vertices left on straight fixed edges (exactly collinear).
    metric = _drop_collinear(metric)
    return shapely.transform(metric, lambda xy: _snap(xy / scale))


def _snap(xy: np.ndarray) -> np.ndarray:
    """Pixel corners back on exact integers (the scaling round trip may leave an ulp off)."""
    nearest = np.rint(xy)
    return np.where(np.abs(xy - nearest) < 1e-7, nearest, xy)


def smooth_coverage(polys: np.ndarray, iterations: int) -> np.ndarray:
    """Chaikin-smooth the shared edges of a polygon coverage; its outer boundary stays fixed.

    The coverage's linework is noded into edges between junctions; each inner
    edge is smoothed once (its end points fixed) and the polygons are rebuilt
    from the edges, so shared edges stay shared. An edge whose smoothed line
    would cross or touch another edge, or itself, keeps its unsmoothed line.
    Returns the input if the rebuilt faces do not match the polygons one to one.
    """
    import shapely

    if len(polys) < 2:
        return polys
    network = shapely.line_merge(shapely.union_all(shapely.boundary(polys)))
    edges = shapely.get_parts(network)
    outer = shapely.boundary(shapely.coverage_union_all(polys))
    movable = ~shapely.covered_by(edges, outer)
    smoothed = edges.copy()
    smoothed[movable] = [_chaikin(e, iterations) for e in edges[movable]]
    changed = movable.copy()
    for _ in range(len(edges)):
        bad = ~shapely.is_simple(smoothed)
        left, right = shapely.STRtree(smoothed).query(smoothed, predicate="intersects")
        pair = left < right
        left, right = left[pair], right[pair]
        # interiors disjoint, and no end point on another edge's interior
        clash = ~shapely.relate_pattern(smoothed[left], smoothed[right], "FF*F*****")
        bad[left[clash]] = True
        bad[right[clash]] = True
        bad &= changed
        if not bad.any():
            break
        smoothed[bad] = edges[bad]
        changed &= ~bad
    faces = shapely.get_parts(shapely.polygonize(smoothed))
    tree = shapely.STRtree(faces)
    which, face = tree.query(polys, predicate="intersects")
    overlap = shapely.area(shapely.intersection(polys[which], faces[face]))
    order = np.lexsort((-overlap, which))
    first = np.ones(len(order), bool)
    first[1:] = which[order][1:] != which[order][:-1]
    chosen = np.full(len(polys), -1)
    chosen[which[order][first]] = face[order][first]
    if (chosen < 0).any() or len(np.unique(chosen)) != len(polys):
        return polys
    return faces[chosen]


def _chaikin(line, iterations: int):
    import shapely

    c = shapely.get_coordinates(line)
    closed = len(c) > 3 and (c[0] == c[-1]).all()
    for _ in range(iterations):
        if closed:
            p = c[:-1]
            q = np.roll(p, -1, axis=0)
            cut = np.empty((2 * len(p), 2))
            cut[0::2] = 0.75 * p + 0.25 * q
            cut[1::2] = 0.25 * p + 0.75 * q
            c = np.vstack([cut, cut[:1]])
        else:
            if len(c) < 3:
                break
            p, q = c[:-1], c[1:]
            cut = np.empty((2 * len(p), 2))
            cut[0::2] = 0.75 * p + 0.25 * q
            cut[1::2] = 0.25 * p + 0.75 * q
            c = np.vstack([c[:1], cut[1:-1], c[-1:]])
    return shapely.LineString(c)


# --------------------------------------------------------------------------- merging across seams

class _Seams:
    """Polygons open across strip seams, merged once they stop growing.

    Each strip's polygons get ids; the pixel runs of the row above the seam
    (from the previous strip, mapped to open groups) and of the row below it
    (this strip's first row) join the groups they connect. A group with a pixel
    in the strip's last row stays open; every other is finished: its parts are
    unioned (they meet along straight seam segments only) and emitted.
    """

    def __init__(self, seam_rows: np.ndarray) -> None:
        self.seam_rows = seam_rows
        self.groups: dict[int, tuple[int, list]] = {}  # root id -> (value, parts)
        self.above_group: np.ndarray | None = None     # per column: open group id or -1
        self.above_value: np.ndarray | None = None
        self.next_id = 0

    def add(self, polys: np.ndarray, values: np.ndarray, top_owner: np.ndarray | None,
            top_values: np.ndarray, bottom_owner: np.ndarray | None,
            bottom_values: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Take one strip; return ``(values, polygons)`` arrays of the finished polygons."""
        n = len(polys)
        ids = self.next_id + np.arange(n)
        self.next_id += n
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(x, x) != root:
                parent[x], x = root, parent[x]
            return root

        if self.above_group is not None and top_owner is not None:
            link = (self.above_group >= 0) & (top_owner >= 0) & (self.above_value == top_values)
            pairs = np.unique(np.stack([self.above_group[link], ids[top_owner[link]]], 1), axis=0)
            for g, i in pairs.tolist():
                a, b = find(g), find(i)
                if a != b:
                    parent[max(a, b)] = min(a, b)
                parent.setdefault(min(a, b), min(a, b))
        bottom = np.zeros(n, bool)
        if bottom_owner is not None:
            bottom[np.unique(bottom_owner[bottom_owner >= 0])] = True
        involved = bottom | np.isin(ids, np.fromiter(parent, np.int64, len(parent)))
        out_values = [values[~involved]]
        out_polys = [polys[~involved]]

        merged: dict[int, tuple[int, list]] = {}
        for gid, (value, parts) in self.groups.items():
            merged.setdefault(find(gid), (value, []))[1].extend(parts)
        for i in np.flatnonzero(involved).tolist():
            merged.setdefault(find(int(ids[i])), (int(values[i]), []))[1].append(polys[i])
        still_open: set[int] = set()
        if bottom_owner is not None:
            roots = {i: find(int(ids[i])) for i in np.flatnonzero(bottom).tolist()}
            lookup = np.full(n, -1, np.int64)
            for i, r in roots.items():
                lookup[i] = r
            # -1 (no polygon) picks the appended -1, also when this strip has none
            self.above_group = np.append(lookup, -1)[bottom_owner]
            self.above_value = bottom_values
            still_open = set(roots.values())
        else:
            self.above_group = self.above_value = None
        self.groups = {}
        done_values, done_polys = [], []
        for root, (value, parts) in merged.items():
            if root in still_open:
                self.groups[root] = (value, parts)
            else:
                geom = parts[0] if len(parts) == 1 else _merge_parts(parts, self.seam_rows)
                done_values.append(value)
                done_polys.append(geom)
        if done_polys:
            out_values.append(np.array(done_values, np.int64))
            out_polys.append(np.array(done_polys, dtype=object))
        return out_values, out_polys


def _merge_parts(parts: list, seam_rows: np.ndarray):
    """Union of the parts of one polygon, which meet only along seam rows.

    The parts' segments on seam rows are split at every pixel corner, so that
    the parts form an edge-matched coverage; GEOS's coverage union then drops
    the shared segments (about 3x faster than a general union here). Where
    the parts pinch at a point, the coverage union can return a ring that
    touches itself, which is not valid: then the general union is used.
    """
    import shapely
    from shapely.errors import GEOSException

    try:
        merged = shapely.coverage_union_all(
            _split_on_rows(np.array(parts, dtype=object), seam_rows))
        merged = _drop_collinear(np.array([merged], dtype=object))[0]
    except GEOSException:
        merged = None
    if merged is None or merged.geom_type != "Polygon" or not merged.is_valid:
        merged = shapely.union_all(parts)
    return merged


def _split_on_rows(polys: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Insert a vertex at every integer column along horizontal segments lying on ``rows``."""
    import shapely

    rings, owner = shapely.get_rings(polys, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    nxt = np.r_[coords[1:], coords[-1:]]
    on_row = (np.r_[ring_of[1:] == ring_of[:-1], False] & (coords[:, 1] == nxt[:, 1])
              & np.isin(coords[:, 1], rows))
    steps = np.maximum(np.where(on_row, np.abs(nxt[:, 0] - coords[:, 0]), 1), 1).astype(np.int64)
    source = np.repeat(np.arange(len(coords)), steps)
    k = np.arange(len(source)) - np.repeat(np.cumsum(steps) - steps, steps)
    out = coords[source]
    out[:, 0] += k * np.sign(nxt[source, 0] - coords[source, 0]) * on_row[source]
    return shapely.polygons(shapely.linearrings(out, indices=ring_of[source]), indices=owner)


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
    seams = _Seams(np.arange(options.block_size, h, options.block_size or h))
    for r0, data, valid in _strips(ds, options.block_size, sieved):
        rows = data.shape[0]
        if keep is not None and not coverage:
            valid &= np.isin(data, keep)
        raw, values = _polygonize(data, valid, r0)
        tree = shapely.STRtree(raw)
        first = r0 > 0
        last = r0 + rows >= h
        top = _row_owners(data[0], valid[0], r0, tree) if first else None
        bottom = _row_owners(data[-1], valid[-1], r0 + rows - 1, tree) if not last else None
        polys = _simplify_strip(raw, ground, tolerance, options.smooth) if coverage else raw
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


# --------------------------------------------------------------------------- output

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


def _check_output(path: Path, driver: str, overwrite: bool, mask: Path) -> None:
    check_output_path(path, overwrite, inputs=[mask])
    if driver == "ESRI Shapefile" and not overwrite:
        for ext in _SHAPEFILE_PARTS:
            part = path.with_suffix(ext)
            if part.exists():
                raise GlnetError(f"{part}: already exists (use --overwrite to replace it)")


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
    _check_output(output, driver, options.overwrite, mask)
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
                sieved, result.sieved_pixels = _sieve(ds, size, Path(work))
                span = (SIEVE_SHARE, 1.0)
                if progress is not None:
                    progress(SIEVE_SHARE)
            # Written under its own name in the work folder (GDAL drivers look at the
            # extension), then renamed into place: Shapefile parts one by one, a
            # single file through files.atomic_output.
            staged = Path(work) / "out" / output.name
            staged.parent.mkdir()
            seen = _write(ds, staged, driver, layer, options, ground, known, table, sieved,
                          progress, span, result)
            if driver == "GPKG":
                write_layer_style(staged, layer, [
                    class_info(v, known, table) for v in sorted(set(known) | seen)
                    if options.class_ids is None or v in options.class_ids])
            if driver == "ESRI Shapefile":
                _move_shapefile(staged, output)
            else:
                with atomic_output(output, options.overwrite) as tmp:
                    os.replace(staged, tmp)
    return result


def _write(ds, path: Path, driver: str, layer: str, options: VectorizeOptions, ground: Ground,
           known, table, sieved, progress, span, result: VectorizeResult) -> set[int]:
    import fiona

    names = SHAPEFILE_FIELDS if driver == "ESRI Shapefile" else FIELDS
    schema = {"geometry": "Polygon",
              "properties": {names[0]: "int", names[1]: "str", names[2]: "float",
                             names[3]: "float"}}
    kwargs = {"layer": layer} if driver == "GPKG" else {}
    if ds.crs is not None:
        kwargs["crs_wkt"] = ds.crs.to_wkt()
    seen: set[int] = set()
    infos: dict[int, ClassInfo] = {}
    with fiona.open(path, "w", driver=driver, schema=schema, **kwargs) as out:
        for values, polys in regions(ds, options, ground, sieved, progress, span):
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


def _move_shapefile(tmp: Path, output: Path) -> None:
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


# --------------------------------------------------------------------------- QGIS style

# QGIS's own layer_styles table (QgsOgrProviderUtils::saveStyle, GeoPackage).
_STYLES_TABLE = """CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  f_table_catalog TEXT(256), f_table_schema TEXT(256), f_table_name TEXT(256),
  f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, styleSLD TEXT,
  useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))"""


def category_sld(classes: Sequence[ClassInfo], layer: str, attribute: str = "class_id") -> str:
    """The same categorised style as an OGC SLD 1.1 document (for clients other than QGIS)."""
    rules = []
    for c in classes:
        hexcolor = "#{:02x}{:02x}{:02x}".format(*c.color)
        rules.append(
            f"<se:Rule><se:Name>{escape(c.name)}</se:Name><ogc:Filter><ogc:PropertyIsEqualTo>"
            f"<ogc:PropertyName>{escape(attribute)}</ogc:PropertyName>"
            f"<ogc:Literal>{c.value}</ogc:Literal></ogc:PropertyIsEqualTo></ogc:Filter>"
            f"<se:PolygonSymbolizer><se:Stroke><se:SvgParameter name=\"stroke\">{hexcolor}"
            f"</se:SvgParameter><se:SvgParameter name=\"stroke-width\">1.5</se:SvgParameter>"
            f"</se:Stroke></se:PolygonSymbolizer></se:Rule>")
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<StyledLayerDescriptor xmlns="http://www.opengis.net/sld" '
            'xmlns:ogc="http://www.opengis.net/ogc" xmlns:se="http://www.opengis.net/se" '
            'version="1.1.0"><NamedLayer>'
            f"<se:Name>{escape(layer)}</se:Name><UserStyle><se:Name>{escape(layer)}</se:Name>"
            f"<se:FeatureTypeStyle>{''.join(rules)}</se:FeatureTypeStyle>"
            "</UserStyle></NamedLayer></StyledLayerDescriptor>")


def write_layer_style(gpkg: str | Path, layer: str, classes: Sequence[ClassInfo],
                      name: str = "land cover classes") -> None:
    """Store a categorised class style as ``layer``'s default style in a GeoPackage.

    Writes QGIS's ``layer_styles`` table (registered in ``gpkg_contents`` as an
    attributes table, so the GeoPackage stays valid); QGIS applies the default
    style when the layer is loaded.
    """
    con = sqlite3.connect(gpkg)
    try:
        with con:
            geom_col = con.execute("SELECT column_name FROM gpkg_geometry_columns "
                                   "WHERE table_name = ?", (layer,)).fetchone()
            con.execute(_STYLES_TABLE)
            con.execute("DELETE FROM layer_styles WHERE f_table_name = ?", (layer,))
            con.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL)",
                (layer, geom_col[0] if geom_col else "geom", name, category_qml(classes),
                 category_sld(classes, layer),
                 "class colours written by glnet vectorize"))
            con.execute(
                "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, "
                "description, last_change) VALUES ('layer_styles', 'attributes', "
                "'layer_styles', '', strftime('%Y-%m-%dT%H:%M:%fZ','now'))")
            has_counts = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                     "name = 'gpkg_ogr_contents'").fetchone()
            if has_counts:
                count = con.execute("SELECT COUNT(*) FROM layer_styles").fetchone()[0]
                con.execute("INSERT OR REPLACE INTO gpkg_ogr_contents (table_name, "
                            "feature_count) VALUES ('layer_styles', ?)", (count,))
    finally:
        con.close()


def read_layer_style(gpkg: str | Path, layer: str) -> str | None:
    """The default QML style of ``layer`` in a GeoPackage, or None."""
    con = sqlite3.connect(f"file:{gpkg}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = ? AND "
                          "useAsDefault ORDER BY id DESC", (layer,)).fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        con.close()
    return row[0] if row else None


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


__all__ = ["FIELDS", "FORMATS", "VectorizeOptions", "VectorizeResult", "category_qml", "driver_for",
           "geojson_polygons", "mask_classes", "open_mask", "read_layer_style", "regions",
           "smooth_coverage", "summary", "vectorize", "write_layer_style"]
