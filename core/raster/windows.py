"""Context windows over a scene: the grid, the blending plan, and a reader thread.

A scene (or the part of it being worked on, the *region*) is covered by a grid
of context windows of the model's ``window_size``. Along each axis the windows
are evenly spaced with at least the requested overlap and the last one aligned
to the far border (``patches.axis_starts``), so every pixel is covered and no
window reaches outside the region; a region narrower than a window gets one
window as wide as the region.

Neighbouring windows are blended over a ramp of ``blend`` pixels centred in
their overlap (a raised cosine that sums to one with its partner): a pixel
takes its prediction from the window in which it lies farthest from a border,
and the hand-over is smooth. A window edge on the region's border is never
tapered. Each axis is thereby cut into *segments*, alternately owned by one
window ("solo") or shared by two ("ramp"); the cells of the product of the row
and column segments are the units in which probabilities are accumulated and
finished (see ``probabilities.py``).

``WindowReader`` reads the windows in processing order on a background thread
(GDAL releases the GIL while it reads and decompresses), so that reading the
next window overlaps with the model's work on the current one.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from ..errors import GlnetError, OptionError
from ..nn.patches import axis_starts


@dataclass(frozen=True)
class Region:
    """A rectangle of pixels: offsets and size in the grid of a dataset."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class Segment:
    """An interval ``[lo, hi)`` of one axis and the windows that have weight on it.

    ``owners`` holds one window index (solo) or two consecutive ones (ramp).
    """

    lo: int
    hi: int
    owners: tuple[int, ...]

    @property
    def last(self) -> int:
        return self.owners[-1]


@dataclass(frozen=True)
class AxisPlan:
    """Windows along one axis of ``size`` pixels and how they are blended.

    Attributes:
        size: pixels along the axis.
        length: window length along it (``min(window, size)``).
        starts: start of each window.
        ramps: ``(start, width)`` of the ramp shared by windows ``k`` and ``k+1``.
        segments: the axis cut into solo and ramp intervals, in order.
    """

    size: int
    length: int
    starts: tuple[int, ...]
    ramps: tuple[tuple[int, int], ...]
    segments: tuple[Segment, ...] = field(repr=False)

    @classmethod
    def build(cls, size: int, window: int, overlap: int, blend: int) -> AxisPlan:
        if size < 1:
            raise ValueError(f"axis of {size} pixels")
        length = min(window, size)
        starts = axis_starts(size, length, min(overlap, length - 1)) if size > length else (0,)
        ramps = []
        for a, b in zip(starts, starts[1:]):
            ov = a + length - b  # actual overlap of this pair (>= the requested one)
            width = max(0, min(blend, ov))  # 0: windows that only touch meet at a hard edge
            ramps.append((b + (ov - width) // 2, width))
        # Ramps must not touch each other: each window keeps a solo part (>= 0 px).
        for (s0, w0), (s1, _) in zip(ramps, ramps[1:]):
            if s0 + w0 > s1:
                raise OptionError("blend ramps overlap; use a smaller overlap or blend width")
        segments: list[Segment] = []
        lo = 0
        for k, (start, width) in enumerate(ramps):
            if start > lo:
                segments.append(Segment(lo, start, (k,)))
            if width:
                segments.append(Segment(start, start + width, (k, k + 1)))
            lo = start + width
        if size > lo:
            segments.append(Segment(lo, size, (len(starts) - 1,)))
        return cls(size, length, tuple(starts), tuple(ramps), tuple(segments))

    def __len__(self) -> int:
        return len(self.starts)

    def weight(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Blending weight of window ``k`` on pixels ``[lo, hi)`` of the axis (float32)."""
        x = np.arange(lo, hi, dtype=np.float64)
        w = np.ones(hi - lo, dtype=np.float64)
        if k > 0:  # ascending ramp shared with the previous window
            start, width = self.ramps[k - 1]
            w *= 1.0 - _descending(x, start, width)
        if k < len(self.starts) - 1:  # descending ramp shared with the next window
            start, width = self.ramps[k]
            w *= _descending(x, start, width)
        return w.astype(np.float32)

    def support(self, k: int) -> tuple[int, int]:
        """Pixels ``[lo, hi)`` on which window ``k`` has non-zero weight."""
        lo = self.ramps[k - 1][0] if k > 0 else 0
        hi = sum(self.ramps[k]) if k < len(self.starts) - 1 else self.size
        return lo, hi

    def segments_of(self, k: int) -> list[int]:
        """Indices of the segments on which window ``k`` has weight."""
        return [i for i, s in enumerate(self.segments) if k in s.owners]


def _descending(x: np.ndarray, start: int, width: int) -> np.ndarray:
    """1 before the ramp, a raised cosine through it (pixel centres), 0 after it."""
    if width == 0:
        return (x < start).astype(np.float64)
    t = np.clip((x + 0.5 - start) / width, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(math.pi * t))


@dataclass(frozen=True)
class Window:
    """One context window: its grid position and pixel rectangle in the region."""

    index: int
    row: int
    col: int
    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class WindowGrid:
    """The windows covering a region, processed row by row."""

    rows: AxisPlan
    cols: AxisPlan

    @classmethod
    def build(cls, height: int, width: int, window: int, overlap: int, blend: int) -> WindowGrid:
        if window < 1:
            raise OptionError(f"window size must be positive, got {window}")
        if not 0 <= overlap <= window // 2:
            raise OptionError(f"window overlap must be between 0 and half the window "
                             f"({window // 2} px), got {overlap}")
        if blend < 1:
            raise OptionError(f"blend width must be at least 1 px, got {blend}")
        return cls(AxisPlan.build(height, window, overlap, blend),
                   AxisPlan.build(width, window, overlap, blend))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[Window]:
        n = 0
        for r, top in enumerate(self.rows.starts):
            for c, left in enumerate(self.cols.starts):
                yield Window(n, r, c, top, left, self.rows.length, self.cols.length)
                n += 1

    def weights(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """Row and column blending weights over the whole window (separable)."""
        return (self.rows.weight(w.row, w.top, w.top + w.height),
                self.cols.weight(w.col, w.left, w.left + w.width))


@dataclass(frozen=True)
class Strip:
    """Rows ``[lo, hi)`` of a region and the window rows ``first..last`` that finish them.

    A strip's rows are whole row segments, so every cell in it gets weight only
    from windows in ``first..last``; strips can therefore be segmented apart
    (on other processes or machines) and give exactly the cells of a run over
    the whole region, at the cost of computing the window row that two strips
    share once for each.
    """

    index: int
    lo: int
    hi: int
    first: int
    last: int

    @property
    def height(self) -> int:
        return self.hi - self.lo


def strips(rows: AxisPlan, count: int) -> list[Strip]:
    """Cut ``rows`` into at most ``count`` strips of about equal height at segment boundaries."""
    bounds = [s.lo for s in rows.segments[1:]]
    cuts: list[int] = []
    for i in range(1, max(1, count)):
        target = rows.size * i / count
        candidates = [b for b in bounds if b > (cuts[-1] if cuts else 0)]
        if not candidates:
            break
        cut = min(candidates, key=lambda b: abs(b - target))
        cuts.append(cut)
    edges = [0, *sorted(set(cuts)), rows.size]
    out = []
    for lo, hi in zip(edges, edges[1:]):
        owners = [k for s in rows.segments if lo <= s.lo < hi for k in s.owners]
        out.append(Strip(len(out), lo, hi, min(owners), max(owners)))
    return out


# -- reading ------------------------------------------------------------------------------


@dataclass
class WindowData:
    """What the reader hands over for one window.

    ``array`` is ``(bands, h, w)`` in the dataset's dtype and ``valid`` an
    ``(h, w)`` boolean mask; both are None for windows without any valid pixel
    (they are skipped).
    """

    window: Window
    array: np.ndarray | None
    valid: np.ndarray | None
    nonfinite: int = 0   # NaN/inf pixels made nodata, counted once over overlapping windows


class ReadFailed(GlnetError):
    """The input could not be read (truncated, corrupt, or vanished meanwhile)."""


class WindowReader:
    """Reads ``grid``'s windows (or ``windows``) in order on a background thread, ``prefetch`` ahead.

    ``open_source`` is called on the reader thread and returns a context
    manager yielding the dataset to read (a rasterio dataset or WarpedVRT).
    ``mask_fn(window, region_window)`` may return an extra ``(h, w)`` boolean
    mask (areas of interest); it runs on the reader thread too.
    """

    def __init__(self, open_source: Callable[[], AbstractContextManager], grid: WindowGrid,
                 region: Region, bands: list[int],
                 mask_fn: Callable[[Window], np.ndarray | None] | None = None,
                 skip: Callable[[Window], bool] | None = None, prefetch: int = 1,
                 windows: list[Window] | None = None, name: str = "the input") -> None:
        self._open = open_source
        self._name = name
        self._grid = grid
        self._windows = list(grid) if windows is None else list(windows)
        self._region = region
        self._bands = bands
        self._mask_fn = mask_fn
        self._skip = skip
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glnet-reader", daemon=True)

    def __enter__(self) -> WindowReader:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a reader waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __iter__(self) -> Iterator[WindowData]:
        for _ in range(len(self._windows)):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fresh(self, w: Window) -> tuple[int, int]:
        """First row and column of ``w`` that no window before it in the grid covers."""
        rows, cols = self._grid.rows, self._grid.cols
        top = rows.starts[w.row - 1] + rows.length - w.top if w.row else 0
        left = cols.starts[w.col - 1] + cols.length - w.left if w.col else 0
        return max(top, 0), max(left, 0)

    def _run(self) -> None:
        from rasterio.errors import RasterioError
        from rasterio.windows import Window as RioWindow

        try:
            with self._open() as src:
                kind = _mask_kind(src, self._bands)
                for w in self._windows:
                    if self._stop.is_set():
                        return
                    if self._skip is not None and self._skip(w):
                        if not self._put(WindowData(w, None, None)):
                            return
                        continue
                    rw = RioWindow(self._region.col_off + w.left, self._region.row_off + w.top,
                                   w.width, w.height)
                    try:
                        array, valid = _read(src, self._bands, rw, kind)
                        nonfinite = _nonfinite(array, valid, self._fresh(w))
                        if self._mask_fn is not None:
                            extra = self._mask_fn(w)
                            if extra is not None:
                                valid &= extra
                        if not valid.any():
                            array = None
                    except RasterioError as exc:
                        raise ReadFailed(f"{self._name}: cannot read pixels {rw.col_off},"
                                         f"{rw.row_off} ({rw.width}x{rw.height}): {exc} "
                                         "(is the file truncated or corrupt?)") from None
                    item = WindowData(w, array, valid if array is not None else None, nonfinite)
                    if not self._put(item):
                        return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)


def _mask_kind(src, bands: list[int]) -> str:
    """How validity is found: "all" valid, from the "nodata" value, or GDAL's "masks"."""
    from rasterio.enums import MaskFlags

    flags = [set(src.mask_flag_enums[b - 1]) for b in bands]
    if all(f == {MaskFlags.all_valid} for f in flags):
        return "all"
    if all(f == {MaskFlags.nodata} for f in flags) and all(
            src.nodatavals[b - 1] is not None for b in bands):
        return "nodata"
    return "masks"


def _read(src, bands: list[int], window, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A window's pixels and validity: a pixel is valid where any chosen band is.

    With a nodata value the mask is computed from the pixels just read (GDAL
    would decode them a second time for ``read_masks``); mask bands and alpha
    go through GDAL.
    """
    array = src.read(bands, window=window)
    if kind == "all":
        valid = np.ones(array.shape[1:], dtype=bool)
    elif kind == "nodata":
        valid = np.zeros(array.shape[1:], dtype=bool)
        for band, b in zip(array, bands):
            valid |= _not_nodata(band, src.nodatavals[b - 1])
    else:
        valid = (src.read_masks(bands, window=window) > 0).any(axis=0)
    return array, valid


def _nonfinite(array: np.ndarray, valid: np.ndarray, fresh: tuple[int, int]) -> int:
    """Make NaN and +-inf pixels (of float rasters) nodata in ``valid``, in place.

    No class can be told from them, and one such value would spread through
    the network's convolutions. Returns how many were made nodata from row and
    column ``fresh`` on (the part of the window no earlier window covered).
    """
    if array.dtype.kind != "f":
        return 0
    bad = valid & ~np.isfinite(array).all(axis=0)
    valid &= ~bad
    return int(bad[fresh[0]:, fresh[1]:].sum())


def _not_nodata(band: np.ndarray, nodata: float) -> np.ndarray:
    """Pixels of ``band`` that differ from ``nodata`` as GDAL compares them."""
    if math.isnan(nodata):
        return ~np.isnan(band) if band.dtype.kind == "f" else np.ones(band.shape, bool)
    if band.dtype.kind in "iu":
        info = np.iinfo(band.dtype)
        if not (float(nodata).is_integer() and info.min <= nodata <= info.max):
            return np.ones(band.shape, bool)  # a value the band cannot hold
        return band != band.dtype.type(int(nodata))
    return band != band.dtype.type(nodata)
