"""Coarse to fine: the global prediction decides which patches the local branch refines.

Two rules from the GLNet paper's coarse-to-fine variant, usable alone or together:

``bbox``
    The bounding box of the pixels the global branch calls foreground (any
    class outside ``background``), enlarged on all sides until foreground and
    background inside it are about 1:1; patches that touch the box are refined.
``confidence``
    Patches where the global branch is already sure (every pixel's top class
    probability at least ``threshold``) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OptionError
from .patches import PatchGrid

MODES = ("all", "bbox", "confidence", "bbox+confidence")


@dataclass(frozen=True)
class RefinePolicy:
    """Which patches get local refinement; ``all`` refines every patch."""

    mode: str = "all"
    threshold: float = 0.9
    background: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"refinement mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise OptionError(f"refine threshold (confidence) must be in (0, 1], got {self.threshold:g}")


def _footprints(grid: PatchGrid, shape: tuple[int, int]) -> np.ndarray:
    """Each patch's (top, left, bottom, right) in a map of ``shape`` covering the window."""
    sy, sx = shape[0] / grid.height, shape[1] / grid.width
    offs = grid.offsets.astype(np.float64)
    top = np.floor(offs[:, 0] * sy)
    left = np.floor(offs[:, 1] * sx)
    bottom = np.maximum(top + 1, np.ceil((offs[:, 0] + grid.patch_h) * sy))
    right = np.maximum(left + 1, np.ceil((offs[:, 1] + grid.patch_w) * sx))
    return np.stack([top, left, bottom, right], axis=1).astype(np.int64)


def foreground_box(foreground: np.ndarray) -> tuple[int, int, int, int] | None:
    """The foreground's bounding box, grown until foreground is at most half of it.

    Returns (top, left, bottom, right), exclusive ends, or None without foreground.
    """
    rows, cols = np.nonzero(foreground)
    if rows.size == 0:
        return None
    H, W = foreground.shape
    t, left, b, r = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    n_fg = rows.size
    # Grow by one cell per side per step: the box stays centred on the foreground.
    while n_fg > 0.5 * (b - t) * (r - left) and (t > 0 or left > 0 or b < H or r < W):
        t, left, b, r = max(t - 1, 0), max(left - 1, 0), min(b + 1, H), min(r + 1, W)
    return int(t), int(left), int(b), int(r)


def select_patches(global_probs: torch.Tensor, grid: PatchGrid, policy: RefinePolicy) -> np.ndarray:
    """Indices of the patches to refine, from the global class probabilities.

    ``global_probs`` is ``(C, h, w)`` over the whole window, at any resolution.
    """
    n = len(grid)
    if policy.mode == "all":
        return np.arange(n)
    probs = global_probs.detach().float().cpu()
    boxes = _footprints(grid, tuple(probs.shape[-2:]))
    keep = np.ones(n, dtype=bool)
    if "bbox" in policy.mode:
        labels = probs.argmax(0).numpy()
        fg = ~np.isin(labels, policy.background)
        box = foreground_box(fg)
        if box is None:
            keep[:] = False
        else:
            t, left, b, r = box
            keep &= (boxes[:, 0] < b) & (boxes[:, 2] > t) & (boxes[:, 1] < r) & (boxes[:, 3] > left)
    if "confidence" in policy.mode:
        conf = probs.max(0).values.numpy()
        sure = np.array([conf[t:b, left:r].min() >= policy.threshold for t, left, b, r in boxes])
        keep &= ~sure
    return np.nonzero(keep)[0]
