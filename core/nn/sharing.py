"""Deep feature-map sharing between GLNet's branches.

Global to local: a patch's footprint is cut out of each global map (plain
slicing, box rounded as in the released code); the local decoder resizes the
crop to its own map. Local to global: each patch's maps are resized into their
footprint in the global map, summed, and divided by the patch-count template.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .fpn import Pyramid
from .patches import PatchGrid


def footprint(shape: tuple[int, int], fraction: Sequence[float],
              ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a patch in a map of ``shape`` (H, W).

    Rounds as the released code (``np.round``, halves to even). A box is at
    least one cell and stays inside the map, where the released code would
    produce an empty crop and fail (its issue #30).
    """
    H, W = shape
    h = max(1, int(np.round(H * ratio[0])))
    w = max(1, int(np.round(W * ratio[1])))
    top = min(int(np.round(fraction[0] * H)), H - h)
    left = min(int(np.round(fraction[1] * W)), W - w)
    return top, left, h, w


def crop(fm: torch.Tensor, fractions: np.ndarray, ratio: tuple[float, float]) -> torch.Tensor:
    """Cut each patch's footprint out of a ``(1, C, H, W)`` global map; ``(n, C, h, w)``."""
    H, W = fm.shape[-2:]
    boxes = [footprint((H, W), f, ratio) for f in fractions]
    return torch.cat([fm[:, :, t:t + h, left:left + w] for t, left, h, w in boxes])


def crop_pyramid(pyr: Pyramid, fractions: np.ndarray, ratio: tuple[float, float]) -> Pyramid:
    """The global context of a batch of patches: every shared map cropped."""
    return Pyramid.from_maps([crop(m, fractions, ratio) for m in pyr.maps()])


def crop_resized(fm: torch.Tensor, fractions: np.ndarray, ratio: tuple[float, float],
                 size: tuple[int, int]) -> torch.Tensor:
    """``crop`` followed by a bilinear resize to ``size``: global maps at a patch's resolution."""
    return F.interpolate(crop(fm, fractions, ratio), size=size, mode="bilinear", align_corners=False)


class LocalToGlobal:
    """Accumulates local maps into the global maps' frames, one patch batch at a time.

    ``add`` takes each batch's pyramid as it is computed, so the local maps of a
    whole window never need to be held at once; ``result`` divides by the
    patch-count template and returns a pyramid shaped like the global one.
    """

    def __init__(self, like: Pyramid, grid: PatchGrid) -> None:
        self.grid = grid
        # Sums in fp32 at least: with a bf16 network, bf16 sums of overlapping
        # patches would lose what the merge is for.
        self.sums = [torch.zeros((1, m.shape[1], *m.shape[-2:]),
                                 dtype=torch.promote_types(m.dtype, torch.float32),
                                 device=m.device)
                     for m in like.maps()]

    def add(self, local: Pyramid, index: slice | range) -> None:
        fractions = self.grid.fractions[index]
        ratio = self.grid.ratio
        for acc, fm in zip(self.sums, local.maps()):
            H, W = acc.shape[-2:]
            for i, f in enumerate(fractions):
                t, left, h, w = footprint((H, W), f, ratio)
                acc[:, :, t:t + h, left:left + w] += F.interpolate(
                    fm[i:i + 1], size=(h, w), mode="bilinear", align_corners=False)

    def result(self) -> Pyramid:
        maps = []
        for acc in self.sums:
            template = self.grid.coverage(tuple(acc.shape[-2:])).to(acc.device, acc.dtype)
            maps.append(acc / template)
        return Pyramid.from_maps(maps)
