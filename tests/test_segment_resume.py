"""``glnet segment --resume``: a killed run continues from the strips it finished."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fixtures_models as fm
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from glnet.config import SegmentOptions
from glnet.files import work_folder
from glnet.modelfile import ModelMeta, save_model
from glnet.nn.glnet import GLNet
from glnet.segment.scene import segment

SIZE = 768  # 112 px windows: 9 rows of windows, 4 strips


def _model(path: Path, seed: int, mean, std) -> Path:
    torch.manual_seed(seed)
    net = GLNet(fm.TINY).eval()
    meta = ModelMeta(net=fm.TINY, classes=fm.CLASSES, bands=("red", "green", "blue"),
                     dtype="uint8", mean=mean, std=std, stages=(1, 2), preset="fast")
    return save_model(net, meta, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    image, _ = fm.landscape(SIZE, SIZE, seed=4)
    scene = d / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=SIZE, height=SIZE, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(image)
    mean, std = fm.scaling(image)
    return d, scene, _model(d / "a.glnet", 0, mean, std), _model(d / "b.glnet", 1, mean, std)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "glnet.cli", "--progress", "none", "segment", *args,
            "--threads", "1"]


def kill_after_first_strip(argv: list[str], out: Path) -> int:
    """Run ``argv`` (a segment to ``out``), SIGKILL it once a strip is done; the strips done."""
    folder = work_folder(out)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("strip-*.json")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = len(list(folder.glob("strip-*.json")))
    return done


def _read(path: Path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.tags(1)


def test_killed_run_resumes_with_the_same_mask(setup, tmp_path):
    d, scene, model, other = setup
    reference = tmp_path / "reference.tif"
    plain = segment(scene, model, reference, SegmentOptions(threads=1))
    assert plain.strips == 4 and plain.strips_reused == 0
    out = tmp_path / "mask.tif"
    folder = work_folder(out)

    done = kill_after_first_strip(_cli(str(scene), "-m", str(model), "-o", str(out)), out)
    assert 1 <= done < 4 and not out.exists()

    # A different model is refused in one line, and the finished strips are kept.
    refused = subprocess.run(_cli(str(scene), "-m", str(other), "-o", str(out), "--resume"),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and not out.exists()
    lines = [line for line in refused.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "different run (model differs)" in lines[0], refused.stderr
    assert len(list(folder.glob("strip-*.json"))) == done

    resumed = subprocess.run(_cli(str(scene), "-m", str(model), "-o", str(out), "--resume"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    reused = int(re.search(r"(\d+) of 4 strips reused", resumed.stdout).group(1))
    assert reused == done  # recomputed: just the strips that were unfinished
    mask, profile, tags = _read(out)
    ref, ref_profile, ref_tags = _read(reference)
    assert profile == ref_profile and tags == ref_tags
    assert mask.tobytes() == ref.tobytes()
    assert not folder.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mask.qml", "mask.tif", "reference.qml", "reference.tif"]

    # Strips give the mask of one strip over the whole scene (today's single-process run).
    with torch.no_grad():
        from glnet.modelfile import load_model

        whole = segment(scene, load_model(model), tmp_path / "whole.tif",
                        SegmentOptions(threads=1))
    assert whole.strips == 1
    assert _read(tmp_path / "whole.tif")[0].tobytes() == ref.tobytes()


def test_plain_run_removes_a_killed_runs_leftovers(setup, tmp_path):
    d, scene, model, _ = setup
    small = tmp_path / "small.tif"
    with rasterio.open(scene) as src, rasterio.open(
            small, "w", **{**src.profile, "width": 200, "height": 200}) as dst:
        dst.write(src.read(window=((0, 200), (0, 200))))
    out = tmp_path / "out"
    out.mkdir()
    mask = out / "mask.tif"
    folder = work_folder(mask)
    folder.mkdir()
    (folder / "strip-00000.tif").write_bytes(b"stale")
    (folder / "run.json").write_text("{}")
    for name in (".mask.tif.abcd1234.part", ".mask.tif.abcd_123.tiled.tif",
                 ".mask.tif.x1y2z3w4.ptiled.tif"):
        (out / name).write_bytes(b"stale")
    (out / "keep.txt").write_text("not ours")
    segment(small, model, mask, SegmentOptions(threads=1))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "mask.qml", "mask.tif"]

    # --resume with nothing to resume runs from the start, with a note.
    messages = []
    segment(small, model, out / "again.tif", SegmentOptions(threads=1, resume=True),
            progress=lambda f, m=None: messages.append(m))
    assert any(m and "nothing to resume" in m for m in messages)
    assert _read(out / "again.tif")[0].tobytes() == _read(mask)[0].tobytes()
    assert not any(p.name.startswith(".") for p in out.iterdir())
    assert os.listdir(out) and not work_folder(out / "again.tif").exists()
