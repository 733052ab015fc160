"""``glnet segment`` says what it will do before doing it: the plan line, the warnings known
at planning time, and a refusal of resampling factors beyond 4x either way (a 30 m scene for
a 0.5 m model is 60x: hours of windows) unless ``--force-resample``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from glnet.cli import main
from glnet.config import SegmentOptions
from glnet.errors import OptionError
from glnet.nn.precision import resolve_precision
from glnet.segment.scene import segment

# The plan line ends with the precision the network runs in: "auto" is this CPU's.
AUTO = resolve_precision(SegmentOptions().precision).name  # the default precision, resolved


def write_scene(path: Path, size: int, resolution: float) -> Path:
    """A ``size`` px RGB scene at ``resolution`` metres per pixel (UTM 33N)."""
    data = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, resolution, resolution)) as ds:
        ds.write(data)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """An untrained tiny model (192 px windows) for 0.5 m pixels, stage 1 only."""
    from glnet.config import NetConfig
    from glnet.modelfile import default_meta, save_model
    from glnet.nn.glnet import GLNet

    cfg = NetConfig(backbone="resnet18", in_channels=3, num_classes=4, fpn_channels=16,
                    smooth_channels=8, fuse_kernel=3, window_size=192, global_size=96,
                    patch_size=96, min_overlap=16)
    path = tmp_path_factory.mktemp("model") / "m.glnet"
    return save_model(GLNet(cfg), default_meta(cfg, stages=(1,), resolution=0.5), path)


def glnet(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plan_and_warnings_come_before_any_progress(model, tmp_path, capsys):
    scene = write_scene(tmp_path / "one_metre.tif", 128, 1.0)  # 2x finer work grid
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    code, stdout, err = glnet(capsys, "--progress", "json", "segment", scene, "-m", model,
                              "-o", out, "--mode", "1", "--no-overviews")
    assert code == 0, err
    lines = err.splitlines()
    assert json.loads(lines[0]) == {
        "message": f"plan: 256 x 256 px at 0.5 m (resampled 2x from 1 m), 4 windows of 192 px, "
                   f"{AUTO}"}
    # Work starts with the engine's first phase message; progress moves only after it.
    started = next(i for i, line in enumerate(lines) if "segmenting" in line)
    moved = next(i for i, line in enumerate(lines)
                 if line.startswith("{") and json.loads(line).get("progress", 0) > 0)
    warnings = [i for i, line in enumerate(lines) if line.startswith("glnet segment: warning:")]
    assert [lines[i] for i in warnings] == [
        "glnet segment: warning: the model was trained on float32 rasters, the scene is uint8: "
        "scaled with the model's statistics anyway",
        "glnet segment: warning: scene resolution 1 x 1 m resampled to the model's 0.5 m and "
        "the mask back"]
    assert max(warnings) < started < moved
    assert "4 window(s)" in stdout and out.exists()


def test_a_factor_beyond_4x_is_refused_before_any_work(model, tmp_path, capsys):
    scene = write_scene(tmp_path / "coarse.tif", 64, 2.5)  # 5x finer for the 0.5 m model
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    code, stdout, err = glnet(capsys, "--progress", "json", "segment", scene, "-m", model,
                              "-o", out, "--mode", "1")
    assert code in (1, 2) and stdout == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err == ("glnet segment: error: coarse.tif: 2.5 m pixels resampled to the model's "
                   "0.5 m is 5x (more than 4x either way): 320 x 320 px in 4 windows of 192 px; "
                   "give --resolution M (e.g. --resolution 0.625: 4x), --no-resample to segment "
                   "the scene's own pixels, or --force-resample to run it anyway\n")
    assert list(out.parent.iterdir()) == []

    # What the message offers works: a chosen resolution, or forcing the factor.
    code, _, err = glnet(capsys, "segment", scene, "-m", model, "-o", out, "--mode", "1",
                         "--no-overviews", "--resolution", "0.625")
    assert code == 0, err
    assert err.splitlines()[0] == ("plan: 256 x 256 px at 0.625 m (resampled 4x from 2.5 m), "
                                   f"4 windows of 192 px, {AUTO}")
    code, stdout, err = glnet(capsys, "segment", scene, "-m", model, "-o", out, "--mode", "1",
                              "--no-overviews", "--overwrite", "--force-resample")
    assert code == 0, err
    assert err.splitlines()[0] == ("plan: 320 x 320 px at 0.5 m (resampled 5x from 2.5 m), "
                                   f"4 windows of 192 px, {AUTO}")
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (64, 64)


def test_the_guard_and_its_options_in_the_library(model, tmp_path):
    scene = write_scene(tmp_path / "coarse.tif", 64, 2.5)
    with pytest.raises(OptionError, match=r"coarse\.tif: 2\.5 m pixels .* is 5x"):
        segment(scene, model, tmp_path / "m.tif", SegmentOptions(mode=1))
    assert list(tmp_path.iterdir()) == [scene]
    with pytest.raises(OptionError, match="resolution must be a positive number"):
        SegmentOptions(resolution=0)
    with pytest.raises(OptionError, match="no resample"):
        SegmentOptions(resolution=2.0, resample=False)
    # Not resampled, nothing to guard: the scene's own pixels.
    res = segment(scene, model, tmp_path / "m.tif", SegmentOptions(mode=1, resample=False,
                                                                   overviews=False))
    assert not res.resampled and res.work_size == (64, 64)
