"""The reliability cases of issue 15 where the QGIS path differs from the CLI's.

Through the real ``qgis_process`` with this checkout's plugin and engine:
training whose validation has no labels (the algorithm reads the engine's
output for its mIoU result), a corrupted model given to the segment
algorithm, and *Resume a stopped run* continuing a segmentation killed with
SIGKILL. Model files read in QGIS's own process (*Model information*) are
covered in test_qgis_plugin.py.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import rasterio
from qgis_support import Qgis, checkout_qgis

from glnet.cli import main

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def qgis(tmp_path_factory) -> Qgis:
    return checkout_qgis(tmp_path_factory)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "d"
    assert main(["synth", str(folder), "--size", "512", "--seed", "1"]) == 0
    return folder


def log_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def test_train_without_validation_labels_writes_the_model(qgis, scene, tmp_path):
    labels = tmp_path / "left.tif"
    with rasterio.open(scene / "labels.tif") as ds:
        data, profile = ds.read(), ds.profile
    data[:, :, 350:] = 255  # the validation strip (the right 20 %) has no labels
    with rasterio.open(labels, "w", **profile) as ds:
        ds.write(data)
    out = tmp_path / "m.glnet"
    proc = qgis.algorithm("glnet:train", f"INPUT={scene / 'scene.tif'}", f"LABELS={labels}",
                          f"CLASSES={scene / 'classes.json'}", f"OUTPUT={out}", "STAGES=1",
                          "EPOCHS=1", "WINDOWS_PER_EPOCH=1", "WINDOW=128", "PATCH=64",
                          "GLOBAL_SIZE=64", "THREADS=1")
    assert proc.returncode == 0, log_of(proc)
    assert out.is_file() and main(["info", str(out)]) == 0
    assert "no labelled pixels in the validation area" in log_of(proc)
    results = json.loads(proc.stdout)["results"]
    assert results["OUTPUT"] == str(out) and results.get("BEST_MIOU") is None


def test_segment_refuses_a_corrupted_model_in_one_line(qgis, scene, tmp_path):
    model = tmp_path / "m.glnet"
    assert main(["train", str(scene / "scene.tif"), "--labels", str(scene / "labels.tif"),
                 "-o", str(model), "--stages", "1", "--epochs", "1", "--windows-per-epoch", "1",
                 "--window", "128", "--patch", "64", "--global-size", "64"]) == 0
    blob = bytearray(model.read_bytes())
    blob[-5000] ^= 0xFF
    model.write_bytes(bytes(blob))
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={scene / 'scene.tif'}",
                          f"MODEL={model}", f"OUTPUT={out}")
    assert proc.returncode != 0, log_of(proc)
    said = f"{model}: corrupt model file (tensor data does not match its SHA-256 checksum)"
    assert said in log_of(proc) and "Traceback" not in log_of(proc)
    assert list(out.parent.iterdir()) == []


def test_resume_continues_a_killed_run_with_the_same_mask(qgis, tmp_path):
    import fixtures_models as fm
    from test_segment_resume import SIZE, _cli, _model, kill_after_first_strip

    image, _ = fm.landscape(SIZE, SIZE, seed=4)
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=SIZE, height=SIZE, count=3,
                       dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.transform.from_origin(500000, 4000000, 0.5, 0.5)) as ds:
        ds.write(image)
    mean, std = fm.scaling(image)
    model = _model(tmp_path / "a.glnet", 0, mean, std)
    reference = tmp_path / "reference.tif"
    options = ["--threads", "1", "--precision", "fp32"]
    assert main(["segment", str(scene), "-m", str(model), "-o", str(reference), *options]) == 0

    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    done = kill_after_first_strip(_cli(str(scene), "-m", str(model), "-o", str(out),
                                       "--precision", "fp32"), out)
    assert 1 <= done < 4 and not out.exists()

    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={scene}", f"MODEL={model}",
                          f"OUTPUT={out}", "RESUME=true", "THREADS=1", "PRECISION=1")
    assert proc.returncode == 0, log_of(proc)
    assert f"{done} of 4 strips reused" in log_of(proc), log_of(proc)
    with rasterio.open(out) as a, rasterio.open(reference) as b:
        assert np.array_equal(a.read(), b.read())
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.qml", "mask.tif"]
