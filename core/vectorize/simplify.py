"""Coverage simplification and smoothing of one strip's polygons, its outer boundary fixed.

A strip's polygons (a polygonal coverage: GDAL's output densified to one
vertex per pixel corner so that neighbours share vertices) go through GEOS's
coverage simplifier (``shapely.coverage_simplify``, Visvalingam-Whyatt on
shared edges, each edge simplified once for both its polygons) with the
coverage's outer boundary fixed: the strip's seams, the raster's border and
the edges against nodata do not move. Shared edges stay shared, so there are
no gaps, overlaps or slivers, and the polygons still cover exactly the valid
pixels. The only trace of the strips is a vertex kept where an edge crosses a
seam. Optional smoothing (Chaikin corner cutting, ``smooth`` iterations)
works on the same edges with the same fixed boundary, and an edge whose
smoothed line would cross another is left unsmoothed. The tolerance is in
metres along the grid (pixel sizes from ``ground``); polygons come in and go
out in pixel coordinates, with pixel corners on exact integers.
"""

from __future__ import annotations

import numpy as np

from ..raster.ground import Ground


def drop_collinear(polys: np.ndarray) -> np.ndarray:
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


def simplify_strip(polys: np.ndarray, ground: Ground, tolerance: float,
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
    metric = drop_collinear(metric)
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
