"""The three training stages of GLNet, one optimisation step at a time.

Each step takes whole context windows with their labels and runs:

stage 1
    the global branch on the downsampled window.
stage 2
    the frozen global branch once per window (no graph), then the local branch
    on sub-batches of patches with the cropped global maps; loss = focal(local)
    + focal(aggregation) + coupling weight x MSE(local, global) per patch. Each
    sub-batch's graph is freed by its own backward pass.
stage 3
    the frozen stage-1 copy and the frozen local branch once per window (no
    graph), their maps merged into the global frame; then the global branch with
    those maps (focal loss on the window) and the aggregation per sub-batch.
    The aggregation's gradient reaches the global branch through a detached
    copy of its last map: sub-batch graphs are freed one by one and a single
    backward pass carries the summed gradient into the global branch, instead
    of the released code's ``retain_graph=True`` per sub-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import TrainConfig
from ..nn.glnet import GLNet
from ..nn.patches import PatchGrid
from ..nn.predict import downsample
from ..nn.sharing import LocalToGlobal, crop_pyramid, crop_resized
from .losses import coupling_loss, focal_loss, match_labels


@dataclass
class StepLosses:
    """Mean losses of one step (floats, for logging)."""

    total: float
    global_: float = 0.0
    local: float = 0.0
    aggregation: float = 0.0
    coupling: float = 0.0


def make_optimizer(model: GLNet, stage: int, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the parameters that ``stage`` trains (call ``model.set_stage`` first).

    Trunk parameters get the stage's rate; the rest (FPN decoders, the
    aggregation conv) that rate times ``cfg.decoder_lr_factor``. Each group
    keeps its ``initial_lr`` for the poly schedule.
    """
    if model.stage != stage:
        raise ValueError(f"model is set up for stage {model.stage}, not {stage}")
    lr = cfg.stages[stage].lr
    trunk, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (trunk if name.split(".", 1)[0].endswith("_backbone") else rest).append(p)
    groups = [{"params": ps, "lr": lr * f, "initial_lr": lr * f}
              for ps, f in ((trunk, 1.0), (rest, cfg.decoder_lr_factor)) if ps]
    return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)


def poly_factor(step: int, total: int, power: float = 0.9) -> float:
    """Learning-rate factor of the poly schedule: ``(1 - step/total)^power``."""
    return max(0.0, 1.0 - step / max(total, 1)) ** power


def train_step(model: GLNet, windows: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> StepLosses:
    """One optimiser step of ``model.stage`` over ``windows``.

    Each item is ``(image, labels)``: a normalised ``(1, bands, H, W)`` window
    and its ``(1, H, W)`` long class indices (``cfg.ignore_index`` where
    unlabelled). Gradients of all windows are summed, then one step is taken.
    """
    optimizer.zero_grad(set_to_none=True)
    parts = accumulate_gradients(model, windows, cfg)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    keys = ("global_", "local", "aggregation", "coupling")
    sums = {k: sum(p.get(k, 0.0) for p in parts) / len(parts) for k in keys}
    total = sums["global_"] + sums["local"] + sums["aggregation"] + cfg.coupling_weight * sums["coupling"]
    return StepLosses(total=total, **sums)


def accumulate_gradients(model: GLNet, windows: list[tuple[torch.Tensor, torch.Tensor]],
                         cfg: TrainConfig) -> list[dict]:
    """The backward passes of one step of ``model.stage``, without the optimiser step.

    Gradients of the mean loss over ``windows`` are added to ``.grad``; returns
    each window's losses.
    """
    if model.stage not in (1, 2, 3):
        raise ValueError("call model.set_stage(1, 2 or 3) before training")
    model.train()
    run = {1: _stage1, 2: _stage2, 3: _stage3}[model.stage]
    return [run(model, image, labels, cfg, 1.0 / len(windows)) for image, labels in windows]


def _loss(logits: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    logits, labels = match_labels(logits, labels, cfg.loss_at_full_resolution)
    return focal_loss(logits, labels, cfg.focal_gamma, cfg.class_weights, cfg.ignore_index)


def _global_input(model: GLNet, image: torch.Tensor) -> torch.Tensor:
    return model.prepare(downsample(image, model.global_shape(*image.shape[-2:])))


def _grid(model: GLNet, image: torch.Tensor) -> PatchGrid:
    H, W = image.shape[-2:]
    return PatchGrid.for_window(H, W, model.cfg.patch_size, model.cfg.min_overlap)


def _batches(indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def _chosen(grid: PatchGrid, cfg: TrainConfig) -> np.ndarray:
    """The patches that carry a loss this step: all, or a random subset."""
    n, k = len(grid), cfg.patches_per_window
    if not k or k >= n:
        return np.arange(n)
    return np.sort(torch.randperm(n)[:k].numpy())


def _stage1(model, image, labels, cfg, scale) -> dict:
    logits = model.global_pyramid(_global_input(model, image)).logits
    loss = _loss(logits, labels, cfg)
    (loss * scale).backward()
    return {"global_": float(loss.detach())}


def _stage2(model, image, labels, cfg, scale) -> dict:
    grid = _grid(model, image)
    with torch.no_grad():
        context = model.context_pyramid(_global_input(model, image))
    out = {"local": 0.0, "aggregation": 0.0, "coupling": 0.0}
    chosen = _chosen(grid, cfg)
    for index in _batches(chosen, cfg.sub_batch):
        share = len(index) / len(chosen)
        fr = grid.fractions[index]
        local = model.local_pyramid(model.prepare(grid.extract(image, index)),
                                    crop_pyramid(context, fr, grid.ratio))
        fg = crop_resized(context.ps3, fr, grid.ratio, tuple(local.ps3.shape[-2:]))
        lab = grid.extract(labels, index)[:, 0]
        l_local = _loss(local.logits, lab, cfg)
        l_agg = _loss(model.aggregate(local.ps3, fg), lab, cfg)
        l_coup = coupling_loss(local.ps3, fg)
        ((l_local + l_agg + cfg.coupling_weight * l_coup) * share * scale).backward()
        out["local"] += float(l_local.detach()) * share
        out["aggregation"] += float(l_agg.detach()) * share
        out["coupling"] += float(l_coup.detach()) * share
    return out


def _stage3(model, image, labels, cfg, scale) -> dict:
    grid = _grid(model, image)
    img_g = _global_input(model, image)
    chosen = _chosen(grid, cfg)
    keep = set(chosen.tolist())
    local_maps: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        # Merging needs every patch's maps; only the chosen ones are kept for the loss.
        context = model.context_pyramid(img_g)
        merger = LocalToGlobal(context, grid)
        for index in _batches(np.arange(len(grid)), cfg.sub_batch):
            local = model.local_pyramid(model.prepare(grid.extract(image, index)),
                                        crop_pyramid(context, grid.fractions[index], grid.ratio))
            merger.add(local, index)
            local_maps.update((int(i), m) for i, m in zip(index, local.ps3) if int(i) in keep)
        merged = merger.result()
    refined = model.refined_pyramid(img_g, merged)
    l_global = _loss(refined.logits, labels, cfg)
    ps3 = refined.ps3.detach().requires_grad_(True)
    l_agg_total = 0.0
    for index in _batches(chosen, cfg.sub_batch):
        share = len(index) / len(chosen)
        fl = torch.stack([local_maps.pop(int(i)) for i in index])
        fg = crop_resized(ps3, grid.fractions[index], grid.ratio, tuple(fl.shape[-2:]))
        lab = grid.extract(labels, index)[:, 0]
        l_agg = _loss(model.aggregate(fl, fg), lab, cfg)
        (l_agg * share * scale).backward()
        l_agg_total += float(l_agg.detach()) * share
    torch.autograd.backward([l_global * scale, refined.ps3], [None, ps3.grad])
    return {"global_": float(l_global.detach()), "aggregation": l_agg_total}
