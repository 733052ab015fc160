"""Raster arrays to network inputs: per-band scaling with the model's statistics.

Inputs of any dtype (uint8, uint16, int16, float32 ...) are scaled as
``(x - mean) / std`` with per-band statistics stored in the model file, never
by a fixed 255. Nodata pixels are set to the band mean (0 after scaling) so
that they do not disturb their neighbours' predictions; callers mask them out
of the result. The torch settings of a run live here too: the device
(``check_device``) and the CPU threads (``torch_threads``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch


def to_tensor(array: np.ndarray, mean: Sequence[float], std: Sequence[float],
              valid: np.ndarray | None = None) -> torch.Tensor:
    """A ``(1, bands, h, w)`` float32 tensor from a ``(bands, h, w)`` raster array.

    ``valid`` is an optional ``(h, w)`` boolean mask; invalid pixels become 0.
    """
    if array.ndim != 3:
        raise ValueError(f"expected a (bands, height, width) array, got shape {array.shape}")
    if len(mean) != array.shape[0] or len(std) != array.shape[0]:
        raise ValueError(f"{array.shape[0]} bands but statistics for {len(mean)}")
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    x = (array.astype(np.float32, copy=False) - m) / s
    if valid is not None:
        x = np.where(valid[None], x, np.float32(0))
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(np.ascontiguousarray(x))[None]


class BandStatistics:
    """Per-band mean and standard deviation accumulated over many windows.

    Sums are kept in float64 so that millions of pixels of uint16 imagery do
    not lose precision; only valid pixels count.
    """

    def __init__(self, bands: int) -> None:
        self.n = np.zeros(bands, dtype=np.float64)
        self.sum = np.zeros(bands, dtype=np.float64)
        self.sumsq = np.zeros(bands, dtype=np.float64)

    def update(self, array: np.ndarray, valid: np.ndarray | None = None) -> None:
        x = array.reshape(array.shape[0], -1).astype(np.float64)
        if valid is not None:
            x = x[:, valid.reshape(-1)]
        x = x[:, np.isfinite(x).all(axis=0)]
        self.n += x.shape[1]
        self.sum += x.sum(axis=1)
        self.sumsq += (x * x).sum(axis=1)

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per band; std is at least 1e-6 so scaling never divides by 0."""
        if (self.n == 0).any():
            raise ValueError("no valid pixels to compute band statistics from")
        mean = self.sum / self.n
        var = np.maximum(self.sumsq / self.n - mean * mean, 0.0)
        std = np.maximum(np.sqrt(var), 1e-6)
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def check_device(name: str) -> torch.device:
    """``name`` (``cpu`` or ``cuda[:n]``) as a torch device, or a clear error if torch cannot use it."""
    from ..errors import GlnetError

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GlnetError(f"device {name!r} asked for, but no CUDA GPU is available to torch")
    elif name != "cpu":
        raise GlnetError(f"device must be 'cpu' or 'cuda', not {name!r}")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise GlnetError(f"device {name!r}: {exc}") from None


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (None: as they are), then put them back.

    ``torch.set_num_threads`` is process-wide: a library call that set it for
    good would change it for its caller, and for the caller's next run, too.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
