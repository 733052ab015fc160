"""Blending window probabilities into finished blocks, a sliding band at a time.

Windows arrive row by row (``windows.WindowGrid`` order). Each window's class
probabilities are multiplied by its separable blending weights and added into
*cells*: the rectangles formed by the row and column segments of the grid (see
``windows.AxisPlan``). A cell is finished as soon as the last window that has
weight on it has been added: then its sum is divided by the sum of the
weights (1 up to rounding, the ramps being a partition of unity) and handed to
``emit``. Interior cells owned by a single window never need an accumulator;
only cells in the ramps between windows wait, so what is held at any time is
the ramp band below the current row of windows (``blend`` rows by the region's
width) plus one window: memory does not grow with the number of rows.

The validity of a cell's pixels is taken from its last window, which contains
the whole cell; a cell whose last window was skipped (no valid pixel) is
emitted without probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..raster.windows import Window, WindowGrid


@dataclass
class Cell:
    """A finished rectangle of the region.

    Attributes:
        top, left: position in the region, pixels.
        probabilities: ``(C, h, w)`` float32 blended probabilities, or None
            where no window had valid pixels (the cell is nodata).
        valid: ``(h, w)`` boolean mask of pixels with data, or None (nodata).
    """

    top: int
    left: int
    height: int
    width: int
    probabilities: np.ndarray | None
    valid: np.ndarray | None


class BandAccumulator:
    """Weighted sums of window probabilities, cell by cell; see the module docstring."""

    def __init__(self, grid: WindowGrid, classes: int, emit: Callable[[Cell], None]) -> None:
        self.grid = grid
        self.classes = classes
        self.emit = emit
        self._sums: dict[tuple[int, int], np.ndarray] = {}
        self.peak_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held by cells that wait for later windows."""
        return sum(a.nbytes for a in self._sums.values())

    def add(self, window: Window, probabilities: np.ndarray | None,
            valid: np.ndarray | None) -> None:
        """Add one window's ``(C, h, w)`` probabilities (None if it was skipped).

        Cells whose last window this is are emitted before returning.
        """
        rows, cols = self.grid.rows, self.grid.cols
        r_segs = rows.segments_of(window.row)
        c_segs = cols.segments_of(window.col)
        if probabilities is not None:
            if probabilities.shape != (self.classes, window.height, window.width):
                raise ValueError(f"window {window.index}: probabilities of shape "
                                 f"{probabilities.shape}, expected "
                                 f"{(self.classes, window.height, window.width)}")
        for i in r_segs:
            rs = rows.segments[i]
            r0, r1 = rs.lo - window.top, rs.hi - window.top
            for j in c_segs:
                cs = cols.segments[j]
                c0, c1 = cs.lo - window.left, cs.hi - window.left
                last = rs.last == window.row and cs.last == window.col
                key = (i, j)
                acc = self._sums.pop(key, None) if last else self._sums.get(key)
                if probabilities is not None:
                    part = probabilities[:, r0:r1, c0:c1]
                    single = len(rs.owners) == 1 and len(cs.owners) == 1
                    if not single:
                        wr = rows.weight(window.row, rs.lo, rs.hi)
                        wc = cols.weight(window.col, cs.lo, cs.hi)
                        part = part * (wr[:, None] * wc[None, :])[None]
                    if acc is None:
                        # Own a copy unless the cell is finished right now.
                        acc = part if last else np.array(part, dtype=np.float32, copy=True)
                        if not last:
                            self._sums[key] = acc
                    else:
                        acc += part
                if last:
                    self._finish(rs, cs, acc, valid, window)
        self.peak_bytes = max(self.peak_bytes, self.pending_bytes)

    def _finish(self, rs, cs, acc, valid, window: Window) -> None:
        h, w = rs.hi - rs.lo, cs.hi - cs.lo
        if acc is None or valid is None:
            # Either no window with data touched the cell, or its last window has
            # no valid pixel (then neither has the cell, which lies inside it).
            self.emit(Cell(rs.lo, cs.lo, h, w, None, None))
            return
        if len(rs.owners) > 1 or len(cs.owners) > 1:
            rows, cols = self.grid.rows, self.grid.cols
            wr = sum(rows.weight(k, rs.lo, rs.hi) for k in rs.owners)
            wc = sum(cols.weight(k, cs.lo, cs.hi) for k in cs.owners)
            acc = acc / (wr[:, None] * wc[None, :])[None]
        cell_valid = valid[rs.lo - window.top:rs.hi - window.top,
                           cs.lo - window.left:cs.hi - window.left]
        self.emit(Cell(rs.lo, cs.lo, h, w, acc, cell_valid))
