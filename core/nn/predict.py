"""One context window through GLNet: normalised window tensor -> class probabilities.

The global branch sees the window downsampled; the local branch sees its
full-resolution patches with the global maps as context (and, for models that
finished stage 3, the global branch is refined with the local maps); patch
predictions from the aggregation conv are averaged where patches overlap.
Scenes larger than a window are assembled from windows elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .glnet import GLNet
from .patches import PatchGrid
from .precision import network_precision
from .refinement import RefinePolicy, select_patches
from .sharing import LocalToGlobal, crop_pyramid, crop_resized


@dataclass
class WindowPrediction:
    """Class probabilities ``(C, H, W)`` of one window and what it cost.

    ``network_dtype`` is the dtype the network's logits came out in
    (``torch.bfloat16`` when it ran in bf16); probabilities are float32 (or the
    model's own dtype if wider) either way.
    """

    probabilities: torch.Tensor
    patches: int
    refined: int
    network_dtype: torch.dtype = torch.float32


def downsample(window: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The global branch's view of a window: bilinear with antialiasing."""
    if tuple(window.shape[-2:]) == tuple(size):
        return window
    return F.interpolate(window, size=size, mode="bilinear", align_corners=False, antialias=True)


def default_mode(model: GLNet, stages: tuple[int, ...] = ()) -> int:
    """The fullest inference mode the model's weights support.

    ``stages``: the training stages done (``ModelMeta.stages``), when known. A
    model kept after stage 1 only (its best validation score came before the
    local branch was trained) runs the global branch alone: its local branch
    holds untrained weights.
    """
    if stages and max(stages) == 1:
        return 1
    return 3 if model.has_context_branch else 2


@torch.no_grad()
def predict_window(model: GLNet, window: torch.Tensor, mode: int | None = None,
                   policy: RefinePolicy | None = None, sub_batch: int = 6,
                   smooth_patches: bool = False,
                   on_batch: Callable[[int, int], None] | None = None,
                   precision: str = "fp32") -> WindowPrediction:
    """Class probabilities for a ``(1, bands, H, W)`` normalised window.

    Args:
        mode: 1 global branch only; 2 global to local with aggregation;
            3 also local to global (needs a model trained through stage 3).
        policy: coarse-to-fine patch selection (mode 2; mode 3 needs every
            patch's maps for local-to-global merging, so it refines all).
        sub_batch: patches per forward pass of the local branch.
        smooth_patches: weight overlapping patches with a raised-cosine
            cross-fade over their overlap instead of a plain mean (no step in
            the weights where a patch ends; the window's own border is not
            tapered). False keeps the released averaging.
        on_batch: called as ``on_batch(done, total)`` after each sub-batch of
            patches (progress; it may raise to cancel).
        precision: "fp32", or "bf16" to run the network under bf16 autocast
            (``glnet.nn.precision``); probabilities are formed and averaged in fp32.
    """
    # One autocast region for the whole window: autocast casts the weights once
    # per region, so entering it per patch batch would cast them again each time.
    with network_precision(precision, window.device.type):
        return _predict_window(model, window, mode, policy, sub_batch, smooth_patches, on_batch)


def _predict_window(model: GLNet, window: torch.Tensor, mode: int | None,
                    policy: RefinePolicy | None, sub_batch: int, smooth_patches: bool,
                    on_batch: Callable[[int, int], None] | None) -> WindowPrediction:
    mode = default_mode(model) if mode is None else mode
    if mode == 3 and not model.has_context_branch:
        raise ValueError("mode 3 needs a model trained through stage 3")
    H, W = window.shape[-2:]
    img_g = model.prepare(downsample(window, model.global_shape(H, W)))
    context = model.context_pyramid(img_g)
    network_dtype = context.logits.dtype
    # Probabilities in fp32 whatever the network ran in (bf16 keeps 8 bits of
    # mantissa: too few to average patches and to rank near-tied classes).
    logits = context.logits.to(torch.promote_types(network_dtype, torch.float32))

    def global_probs() -> torch.Tensor:
        # Full-resolution global probabilities: C x H x W floats, so made only
        # when needed (mode 1, or pixels that no refined patch covers).
        return F.interpolate(logits, size=(H, W), mode="bilinear",
                             align_corners=False).softmax(1)[0]

    if mode == 1:
        return WindowPrediction(global_probs(), 0, 0, network_dtype)

    cfg = model.cfg
    grid = PatchGrid.for_window(H, W, cfg.patch_size, cfg.min_overlap)
    if mode == 3:
        selected = np.arange(len(grid))
    else:
        selected = select_patches(logits[0].softmax(0), grid, policy or RefinePolicy())

    global_ps3 = context.ps3
    local_maps: dict[int, torch.Tensor] = {}
    # Progress in patch passes: mode 3 runs the local branch, then the aggregation.
    steps = 2 * len(grid) if mode == 3 else len(selected)
    done = 0
    if mode == 3:
        merger = LocalToGlobal(context, grid)
        for start in range(0, len(grid), sub_batch):
            index = range(start, min(start + sub_batch, len(grid)))
            local = _local(model, window, grid, context, index)
            merger.add(local, index)
            local_maps.update(zip(index, local.ps3))
            done += len(index)
            if on_batch is not None:
                on_batch(done, steps)
        global_ps3 = model.refined_pyramid(img_g, merger.result()).ps3
    if smooth_patches:
        row_w = _patch_axis_weights(grid.tops, grid.patch_h, logits)
        col_w = _patch_axis_weights(grid.lefts, grid.patch_w, logits)

    total = torch.zeros((logits.shape[1], H, W), dtype=logits.dtype, device=logits.device)
    weight = torch.zeros((1, H, W), dtype=logits.dtype, device=logits.device)
    for start in range(0, len(selected), sub_batch):
        index = selected[start:start + sub_batch]
        if mode == 3:
            fl = torch.stack([local_maps.pop(int(i)) for i in index])
        else:
            fl = _local(model, window, grid, context, index).ps3
        fg = crop_resized(global_ps3, grid.fractions[index], grid.ratio, tuple(fl.shape[-2:]))
        probs = F.interpolate(model.aggregate(fl, fg).to(logits.dtype),
                              size=(grid.patch_h, grid.patch_w),
                              mode="bilinear", align_corners=False).softmax(1)
        for i, p, (t, left) in zip(index.tolist(), probs, grid.offsets[index].tolist()):
            if smooth_patches:
                w = row_w[i // len(grid.lefts)][:, None] * col_w[i % len(grid.lefts)][None, :]
                total[:, t:t + grid.patch_h, left:left + grid.patch_w] += p * w
                weight[:, t:t + grid.patch_h, left:left + grid.patch_w] += w
            else:
                total[:, t:t + grid.patch_h, left:left + grid.patch_w] += p
                weight[:, t:t + grid.patch_h, left:left + grid.patch_w] += 1
        done += len(index)
        if on_batch is not None:
            on_batch(done, steps)
    # Pixels no refined patch covers keep the global branch's prediction.
    covered = weight > 0
    total /= weight.clamp(min=1e-12) if smooth_patches else weight.clamp(min=1)
    probs = total if bool(covered.all()) else torch.where(covered, total, global_probs())
    return WindowPrediction(probs, len(grid), len(selected), network_dtype)


def _patch_axis_weights(starts: tuple[int, ...], length: int,
                        like: torch.Tensor) -> list[torch.Tensor]:
    """Per-patch weights along one axis: 1, with a raised-cosine ramp over each overlap.

    A patch fades out over its overlap with the next patch exactly as that one
    fades in (the two sum to one); sides without a neighbour are not tapered.
    Weights are strictly positive wherever a patch lies.
    """
    x = torch.arange(length, dtype=torch.float64) + 0.5
    out = []
    for k, s in enumerate(starts):
        w = torch.ones(length, dtype=torch.float64)
        if k > 0:
            ov = starts[k - 1] + length - s
            if ov > 0:
                w *= 0.5 - 0.5 * torch.cos(torch.pi * (x / ov).clamp(max=1.0))
        if k < len(starts) - 1:
            ov = s + length - starts[k + 1]
            if ov > 0:
                w *= 0.5 - 0.5 * torch.cos(torch.pi * ((length - x) / ov).clamp(max=1.0))
        out.append(w.to(device=like.device, dtype=like.dtype))
    return out


def _local(model: GLNet, window: torch.Tensor, grid: PatchGrid, context, index):
    patches = model.prepare(grid.extract(window, index))
    return model.local_pyramid(patches, crop_pyramid(context, grid.fractions[index], grid.ratio))
