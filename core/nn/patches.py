"""The grid of full-resolution patches that tile one context window.

The grid follows the released GLNet: along each axis the fewest patches that
cover the window with at least ``min_overlap`` pixels between neighbours,
evenly spaced, the last one aligned to the far border. Every pixel of the
window is covered; a window narrower than a patch gets one patch as wide as
the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F


def axis_starts(size: int, patch: int, min_overlap: int) -> tuple[int, ...]:
    """Start offsets of patches along one axis of ``size`` pixels.

    >>> axis_starts(2448, 508, 50)
    (0, 388, 776, 1164, 1552, 1940)
    """
    if size <= patch:
        return (0,)
    n = math.ceil(size / patch)
    n = max(n, 2)
    while patch - (size - patch) / (n - 1) < min_overlap:
        n += 1
    step = (size - patch) / (n - 1)
    # np.round rounds halves to even, as the released code does.
    starts = [int(np.round(i * step)) for i in range(n - 1)] + [size - patch]
    return tuple(starts)


@dataclass(frozen=True)
class PatchGrid:
    """Patches of a ``height`` x ``width`` window, numbered row by row."""

    height: int
    width: int
    patch_h: int
    patch_w: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]

    @classmethod
    def for_window(cls, height: int, width: int, patch: int, min_overlap: int = 50) -> PatchGrid:
        ph, pw = min(patch, height), min(patch, width)
        return cls(height, width, ph, pw,
                   axis_starts(height, ph, min_overlap), axis_starts(width, pw, min_overlap))

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    @cached_property
    def offsets(self) -> np.ndarray:
        """``(n, 2)`` int array of each patch's (top, left) in window pixels."""
        return np.array([(t, left) for t in self.tops for left in self.lefts], dtype=np.int64)

    @cached_property
    def fractions(self) -> np.ndarray:
        """``(n, 2)`` float64 (top, left) as fractions of the window's height and width."""
        return self.offsets / np.array([self.height, self.width], dtype=np.float64)

    @property
    def ratio(self) -> tuple[float, float]:
        """Patch size as a fraction of the window, (height, width)."""
        return self.patch_h / self.height, self.patch_w / self.width

    @property
    def redundancy(self) -> float:
        """Pixels the local branch sees per window pixel (1.0 without overlap)."""
        return len(self) * self.patch_h * self.patch_w / (self.height * self.width)

    def extract(self, window: torch.Tensor, index: slice | range) -> torch.Tensor:
        """Patches ``index`` of ``window`` (``(1, C, H, W)`` or ``(C, H, W)``) as one batch."""
        if window.dim() == 4:
            window = window[0]
        offs = self.offsets[index]
        return torch.stack([window[:, t:t + self.patch_h, left:left + self.patch_w]
                            for t, left in offs.tolist()])

    def coverage(self, size: tuple[int, int]) -> torch.Tensor:
        """How many patches cover each pixel, bilinearly resized to ``size``.

        Returns a ``(1, 1, h, w)`` float32 tensor: the divisor of local-to-global
        merging. The count is the outer product of the per-axis counts, and a
        bilinear resize is separable, so this never builds the full-resolution
        template.
        """
        rows = _axis_counts(self.height, self.tops, self.patch_h)
        cols = _axis_counts(self.width, self.lefts, self.patch_w)
        r = F.interpolate(rows.view(1, 1, -1, 1), size=(size[0], 1), mode="bilinear",
                          align_corners=False).view(-1, 1)
        c = F.interpolate(cols.view(1, 1, 1, -1), size=(1, size[1]), mode="bilinear",
                          align_corners=False).view(1, -1)
        return (r * c).view(1, 1, size[0], size[1])


def _axis_counts(size: int, starts: tuple[int, ...], patch: int) -> torch.Tensor:
    counts = torch.zeros(size, dtype=torch.float32)
    for s in starts:
        counts[s:s + patch] += 1
    return counts
