"""Losses of GLNet training: focal loss and the weak-coupling term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 3.0,
               weight: Sequence[float] | torch.Tensor | None = None,
               ignore_index: int = 255) -> torch.Tensor:
    """Mean focal loss ``-(1 - p_t)^gamma * log p_t`` over labelled pixels.

    Args:
        logits: ``(B, C, H, W)`` class scores, at the same size as ``target``.
        target: ``(B, H, W)`` class indices; ``ignore_index`` contributes nothing.
        gamma: focusing parameter (0 gives cross-entropy; 3 as released).
        weight: optional per-class weights; the mean is then weighted.

    Returns 0 (with a gradient path) when no pixel is labelled.
    """
    valid = target != ignore_index
    logp = F.log_softmax(logits.float(), dim=1)
    safe = torch.where(valid, target, torch.zeros_like(target))
    logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    p_t = logp_t.exp().clamp(max=1.0)
    loss = -((1.0 - p_t) ** gamma) * logp_t
    w = valid.to(loss.dtype)
    if weight is not None:
        w = w * torch.as_tensor(weight, dtype=loss.dtype, device=loss.device)[safe]
    denom = w.sum()
    if denom == 0:
        return logits.sum() * 0.0
    return (loss * w).sum() / denom


def coupling_loss(local_ps3: torch.Tensor, global_ps3: torch.Tensor) -> torch.Tensor:
    """Weak coupling: MSE between the local last map and the cropped, resized global one."""
    return F.mse_loss(local_ps3, global_ps3)


def match_labels(logits: torch.Tensor, target: torch.Tensor, full_resolution: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring logits (stride 4) and labels to one size for the loss.

    ``full_resolution`` upsamples the logits bilinearly to the labels (thin
    structures keep their pixels); otherwise the labels are subsampled by
    nearest neighbour to the logits, as the released code does.
    """
    if logits.shape[-2:] == target.shape[-2:]:
        return logits, target
    if full_resolution:
        return F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False), target
    small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")
    return logits, small[:, 0].long()
