"""Shapes and behaviour of the GLNet network, window prediction and coarse to fine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glnet.config import NetConfig, preset
from glnet.nn.glnet import GLNet
from glnet.nn.patches import PatchGrid, axis_starts
from glnet.nn.predict import predict_window
from glnet.nn.refinement import RefinePolicy, foreground_box, select_patches


def test_released_patch_grid():
    assert axis_starts(2448, 508, 50) == (0, 388, 776, 1164, 1552, 1940)
    grid = PatchGrid.for_window(2448, 2448, 508, 50)
    assert len(grid) == 36 and grid.ratio == (508 / 2448, 508 / 2448)


@pytest.mark.parametrize("size,patch", [(1000, 508), (1300, 508), (509, 508), (5000, 512), (300, 512)])
def test_grid_covers_every_pixel_with_overlap(size, patch):
    starts = axis_starts(size, min(patch, size), 50)
    p = min(patch, size)
    covered = np.zeros(size, int)
    for s in starts:
        assert 0 <= s and s + p <= size
        covered[s:s + p] += 1
    assert covered.min() >= 1
    assert starts[-1] == size - p
    for a, b in zip(starts, starts[1:]):
        assert a + p - b >= 50  # overlap


def test_coverage_template_matches_full_resolution(tiny_cfg):
    grid = PatchGrid.for_window(1000, 1300, 508, 50)
    full = torch.zeros(1, 1, 1000, 1300)
    for t, left in grid.offsets:
        full[..., t:t + 508, left:left + 508] += 1
    small = torch.nn.functional.interpolate(full, size=(63, 82), mode="bilinear", align_corners=False)
    torch.testing.assert_close(grid.coverage((63, 82)), small)


@pytest.mark.parametrize("bands", [1, 4])
@pytest.mark.parametrize("mode", [1, 2, 3])
def test_window_not_a_multiple_of_the_patch(bands, mode):
    cfg = NetConfig(backbone="resnet18", in_channels=bands, num_classes=5, fpn_channels=16,
                    smooth_channels=8, window_size=1300, global_size=256, patch_size=508)
    model = GLNet(cfg, context_branch=(mode == 3)).eval()
    window = torch.rand(1, bands, 1000, 1300)
    pred = predict_window(model, window, mode=mode, sub_batch=4)
    assert pred.probabilities.shape == (5, 1000, 1300)
    torch.testing.assert_close(pred.probabilities.sum(0), torch.ones(1000, 1300))
    assert pred.patches == (0 if mode == 1 else 9)  # 3 rows x 3 columns


def test_window_smaller_than_a_patch(tiny_cfg):
    model = GLNet(tiny_cfg, context_branch=True).eval()
    for mode in (1, 2, 3):
        pred = predict_window(model, torch.rand(1, 3, 50, 70), mode=mode)
        assert pred.probabilities.shape == (4, 50, 70)
        assert torch.isfinite(pred.probabilities).all()


def test_presets():
    off = preset("official")
    assert (off.backbone, off.fpn_channels, off.smooth_channels, off.fuse_kernel) == ("resnet50", 256, 128, 3)
    fast = preset("fast")
    assert fast.backbone == "resnet18" and fast.channels_last
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_official_parameter_count():
    model = GLNet(preset("official"))
    n = sum(v.numel() for v in model.state_dict().values())
    assert n == 79_307_263  # the released model's parameter list, buffers included


def test_foreground_box_grows_to_one_to_one():
    fg = np.zeros((100, 100), bool)
    fg[40:60, 40:60] = True  # a full 20 x 20 block
    t, left, b, r = foreground_box(fg)
    area = (b - t) * (r - left)
    assert fg[t:b, left:r].sum() == 400
    assert 0.4 <= 400 / area <= 0.5  # about 1:1 (grown two cells at a time)
    assert foreground_box(np.zeros((10, 10), bool)) is None


def test_select_patches_by_box_and_confidence():
    grid = PatchGrid.for_window(400, 400, 100, 0)  # 4 x 4 patches, no overlap
    probs = torch.zeros(2, 400, 400)
    probs[0] = 0.99
    probs[1] = 0.01
    probs[0, 10:40, 10:40], probs[1, 10:40, 10:40] = 0.2, 0.8  # foreground in patch 0
    by_box = select_patches(probs, grid, RefinePolicy("bbox"))
    assert list(by_box) == [0]
    by_conf = select_patches(probs, grid, RefinePolicy("confidence", threshold=0.9))
    assert list(by_conf) == [0]
    probs[0, 300:310, 300:310], probs[1, 300:310, 300:310] = 0.6, 0.4  # unsure background
    assert list(select_patches(probs, grid, RefinePolicy("confidence", threshold=0.9))) == [0, 15]
    assert list(select_patches(probs, grid, RefinePolicy("bbox+confidence", threshold=0.9))) == [0]
    assert len(select_patches(probs, grid, RefinePolicy())) == 16


def test_coarse_to_fine_skips_patches_and_keeps_global_there(tiny_cfg):
    model = GLNet(tiny_cfg).eval()
    window = torch.rand(1, 3, 192, 192)
    full = predict_window(model, window, mode=2)
    none = predict_window(model, window, mode=2, policy=RefinePolicy("confidence", threshold=1e-6))
    glob = predict_window(model, window, mode=1)
    assert none.refined == 0 and full.refined == full.patches
    torch.testing.assert_close(none.probabilities, glob.probabilities)
