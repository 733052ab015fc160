"""Merging the polygons that strip seams cut, once they stop growing.

A polygon cut by the seam between two strips is found by the pixel runs on
both sides of the seam (same class, a shared pixel edge) and merged by a
union once no part of it touches the strip being read any more; all other
polygons are finished as soon as their strip is done. Only the polygons still
open across the last seam are held. The parts of one polygon meet only along
seam rows (horizontal lines on integer rows, pixel coordinates), which the
union relies on.
"""

from __future__ import annotations

import numpy as np

from .simplify import drop_collinear


class Seams:
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
        merged = drop_collinear(np.array([merged], dtype=object))[0]
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
