"""The benchmarks' peer: a plain single-branch ResNet-FPN, and a whole-scene sliding window.

``SingleBranchFPN`` is GLNet's global branch taken alone, on its plain path
(the preset's trunk and FPN decoder, no context), run at full resolution:
logits bilinearly upsampled to the tile and soft-maxed in fp32, as
``predict_window`` forms probabilities. ``benchmarks/model_speed.py`` times it
on tiles of one window (its baseline); ``benchmarks/scene_scale.py`` runs it
over whole scenes with ``sliding_window_segment``.

``sliding_window_segment`` predicts a scene the way Raster Vision's and
GeoAI's sliding-window predictors do: chips read one by one, class scores
added into a float16 array of the whole scene (classes x height x width) and
each pixel's chip count into a uint8 array of the scene (Raster Vision's
``SemanticSegmentationSmoothLabels`` keeps exactly these two), the mean score's
argmax written as the mask. Its memory therefore grows with the scene. The
mask is finished in strips of rows (as Raster Vision writes it, window by
window), so beyond the two arrays only one strip is held.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glnet.config import preset
from glnet.nn.glnet import GLNet
from glnet.nn.precision import network_precision

# Raster Vision / GeoAI style geometry: 512 px chips every 384 px (128 px overlap).
CHIP = 512
STRIDE = 384
BATCH = 4
# Rows of the mask finished per write (a multiple of its block size).
STRIP_ROWS = 512


class SingleBranchFPN(nn.Module):
    """Class probabilities ``(B, C, h, w)`` of a GLNet's global branch alone, at full resolution.

    Holds the global trunk and decoder of ``model`` (the same modules, not a
    copy); the local branch is not referenced, so a model built only for this
    can be dropped.
    """

    def __init__(self, model: GLNet) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.backbone = model.global_backbone
        self.decoder = model.global_decoder

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else tiles
        logits = self.decoder(self.backbone(x)).logits
        # Probabilities in fp32 whatever the network ran in, as predict_window forms them.
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.interpolate(logits, size=tiles.shape[-2:], mode="bilinear",
                             align_corners=False).softmax(1)


def build_peer(preset_name: str) -> SingleBranchFPN:
    """The peer of ``preset_name``: random weights (seed 0), eval mode."""
    torch.manual_seed(0)
    return SingleBranchFPN(GLNet(preset(preset_name)).eval()).eval()


def chip_offsets(size: int, chip: int, stride: int) -> list[int]:
    """Chip starts along one axis: every ``stride``, the last one flush with the edge."""
    if size <= chip:
        return [0]
    starts = list(range(0, size - chip + 1, stride))
    if starts[-1] + chip < size:
        starts.append(size - chip)
    return starts


def sliding_window_segment(scene: str | Path, output: str | Path, net: SingleBranchFPN,
                           mean, std, precision: str = "fp32", chip: int = CHIP,
                           stride: int = STRIDE, batch: int = BATCH,
                           cache_mb: int = 32) -> dict:
    """Segment ``scene`` into the uint8 mask ``output`` (tiled, deflate, the scene's grid).

    Pixels are scaled as ``(x - mean) / std`` per band; the network runs under
    ``precision`` ("fp32" or "bf16" autocast), ``batch`` chips per pass.
    ``cache_mb`` is GDAL's block cache (``segment``'s default, so that the two
    differ in how scores are held, not in GDAL's cache). Returns the chip count,
    the bytes of the two whole-scene arrays, the seconds in the network and the
    pixels of each class.
    """
    import rasterio
    from rasterio.windows import Window

    num_classes = net.cfg.num_classes
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    model_seconds = 0.0
    with rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20), rasterio.open(scene) as src:
        height, width = src.height, src.width
        ch, cw = min(chip, height), min(chip, width)
        scores = np.zeros((num_classes, height, width), dtype=np.float16)
        hits = np.zeros((height, width), dtype=np.uint8)
        chips = [(top, left) for top in chip_offsets(height, ch, stride)
                 for left in chip_offsets(width, cw, stride)]
        with torch.inference_mode():
            for start in range(0, len(chips), batch):
                part = chips[start:start + batch]
                arrays = [src.read(window=Window(left, top, cw, ch)) for top, left in part]
                x = torch.from_numpy((np.stack(arrays).astype(np.float32) - m) / s)
                t = time.perf_counter()
                with network_precision(precision, "cpu"):
                    probs = net(x)
                model_seconds += time.perf_counter() - t
                for p, (top, left) in zip(probs.numpy(), part):
                    scores[:, top:top + ch, left:left + cw] += p
                    hits[top:top + ch, left:left + cw] += 1
        profile = dict(driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs=src.crs, transform=src.transform, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate", bigtiff="IF_SAFER")
        counts = np.zeros(num_classes, np.int64)
        with rasterio.open(output, "w", **profile) as dst:
            for top in range(0, height, STRIP_ROWS):
                rows = slice(top, min(top + STRIP_ROWS, height))
                label = (scores[:, rows] / hits[rows]).argmax(0).astype(np.uint8)
                counts += np.bincount(label.ravel(), minlength=num_classes)
                dst.write(label, 1, window=Window(0, top, width, label.shape[0]))
    return {"chips": len(chips), "scores_mb": (scores.nbytes + hits.nbytes) / 2**20,
            "model_seconds": model_seconds, "counts": counts.tolist()}
