"""Training on georeferenced data: real rasters and polygons, dataset folders, resume, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from glnet.cli import main
from glnet.errors import GlnetError
from glnet.modelfile import load_model, read_metadata
from glnet.raster.labels import VectorLabels
from glnet.train.datasets import scenes_from_folder, scenes_from_pairs
from glnet.train.training import Prefetcher

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
SPACENET = REAL / "spacenet-atlanta-buildings"
LOVEDA = REAL / "loveda"
GLNET = str(Path(sys.executable).with_name("glnet"))
TINY = ["--window", "128", "--patch", "64", "--global-size", "64", "--quiet", "--threads", "2"]


def _write_pair(folder: Path, size=192, bands=3, crs="EPSG:32633", seed=0, label_values=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    lab = np.full((size, size), label_values[0], np.uint8)
    lab[:, size // 2:] = label_values[1]
    lab[size // 4: size // 2, size // 8: size // 3] = label_values[2]
    img = np.stack([(lab * 60 + rng.integers(0, 40, lab.shape)) % 256 for _ in range(bands)]).astype(np.uint8)
    prof = dict(driver="GTiff", width=size, height=size, crs=crs,
                transform=from_origin(500000, 5000000, 0.5, 0.5))
    with rasterio.open(folder / "img.tif", "w", count=bands, dtype="uint8", **prof) as ds:
        ds.write(img)
    with rasterio.open(folder / "lab.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as ds:
        ds.write(lab, 1)
    return folder / "img.tif", folder / "lab.tif"


def test_spacenet_polygons_rasterise_to_the_shipped_mask():
    with rasterio.open(SPACENET / "sample_geotiff.tif") as image:
        labels = VectorLabels(SPACENET / "geotiff_labels.geojson", image, constant="building")
        ours = labels.read(rasterio.windows.Window(0, 0, image.width, image.height))
    with rasterio.open(SPACENET / "sample_fp_mask_from_geojson.tif") as ds:
        shipped = ds.read(1)
    assert [c.name for c in labels.classes] == ["background", "building"]
    assert np.array_equal(ours == 1, shipped == 255)
    assert np.array_equal(ours == 0, shipped == 0)
    assert (ours == 1).sum() == (shipped == 255).sum() > 30000


def test_train_on_spacenet_uint16_with_polygons(tmp_path):
    out = tmp_path / "buildings.glnet"
    rc = main(["train", str(SPACENET / "sample_geotiff.tif"), "--labels",
               str(SPACENET / "geotiff_labels.geojson"), "--class-name", "building", "-o", str(out),
               "--epochs", "1", "--windows-per-epoch", "2", *TINY])
    assert rc == 0
    meta = read_metadata(out)
    assert meta.class_names == ["background", "building"]
    assert meta.dtype == "uint16" and meta.bands == ("band 1",) and meta.resolution == pytest.approx(0.5)
    assert 54 < meta.mean[0] < 6615 and meta.std[0] > 10  # statistics of the real uint16 pixels
    assert meta.stages == (1, 2, 3) or set(meta.stages) <= {1, 2, 3}


def test_train_on_loveda_folder(tmp_path):
    scenes, classes = scenes_from_folder(LOVEDA)
    assert len(scenes) == 3 and [c.name for c in classes][:3] == ["background", "building", "road"]
    _, labels, _ = scenes[0].read(rasterio.windows.Window(0, 0, 1024, 1024))
    # LoveDA's 1..7 become 0..6; its 0 (no data) is ignored.
    assert set(np.unique(labels)) <= set(range(7)) | {255}
    assert (labels == 6).sum() == 868612  # agriculture pixels of tile 0 (value 7 in the file)
    out = tmp_path / "loveda.glnet"
    assert main(["train", "--dataset", str(LOVEDA), "-o", str(out), "--epochs", "1",
                 "--windows-per-epoch", "2", "--stages", "1,2", *TINY]) == 0
    model, meta = load_model(out)
    assert meta.net.num_classes == 7 and meta.dtype == "uint8"


def test_bad_inputs(tmp_path):
    img, lab = _write_pair(tmp_path, label_values=(0, 1, 9))
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"value": i, "name": n, "color": [i, i, i]}
                                   for i, n in enumerate(["a", "b", "c"])]))
    out = str(tmp_path / "m.glnet")
    with pytest.raises(GlnetError, match=r"lab\.tif: label value 9 is outside the classes 0\.\.2"):
        scenes, found = scenes_from_pairs([img], [lab], classes=_classes(classes))
        scenes[0].read(rasterio.windows.Window(0, 0, 192, 192), len(found))
    # a vector file without the class field lists the fields it has
    vec = tmp_path / "polys.gpkg"
    schema = {"geometry": "Polygon", "properties": {"kind": "str", "height": "float"}}
    with fiona.open(vec, "w", driver="GPKG", crs="EPSG:32633", schema=schema) as dst:
        dst.write({"geometry": {"type": "Polygon", "coordinates": [[(500000, 4999950), (500050, 4999950),
                   (500050, 5000000), (500000, 4999950)]]}, "properties": {"kind": "x", "height": 1.0}})
    with pytest.raises(GlnetError, match=r"polys\.gpkg: no class field 'class'; its fields are: kind, height"):
        scenes_from_pairs([img], [vec], class_field="class")
    # labels far away from the image
    far = tmp_path / "far.gpkg"
    with fiona.open(far, "w", driver="GPKG", crs="EPSG:32633", schema=schema) as dst:
        dst.write({"geometry": {"type": "Polygon", "coordinates": [[(0, 0), (10, 0), (10, 10), (0, 0)]]},
                   "properties": {"kind": "x", "height": 1.0}})
    with pytest.raises(GlnetError, match=r"far\.gpkg: labels do not overlap the image"):
        scenes_from_pairs([img], [far], class_field="kind")
    # an image that is not a raster
    notes = tmp_path / "notes.tif"
    notes.write_text("not a raster")
    with pytest.raises(GlnetError, match=r"notes\.tif: not a raster"):
        scenes_from_pairs([notes], [lab])
    # scenes with different band counts
    other = tmp_path / "b"
    other.mkdir()
    img4, lab4 = _write_pair(other, bands=4)
    with pytest.raises(GlnetError, match="different band counts.*img.tif: 3.*img.tif: 4"):
        scenes_from_pairs([img, img4], [lab, lab4])
    # through the CLI: one line, exit 1
    res = subprocess.run([GLNET, "train", str(notes), "--labels", str(lab), "-o", out],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "notes.tif: not a raster" in res.stderr and "Traceback" not in res.stderr


def test_device_choice(tmp_path):
    img, lab = _write_pair(tmp_path)
    out = tmp_path / "m.glnet"
    asks = [("tpu", "device must be 'cpu' or 'cuda', not 'tpu'")]
    if not torch.cuda.is_available():
        asks.append(("cuda", "device 'cuda' asked for, but no CUDA GPU is available to torch"))
    for device, message in asks:
        res = subprocess.run([sys.executable, "-m", "glnet.cli", "train", str(img), "--labels",
                              str(lab), "-o", str(out), "--device", device, *TINY],
                             capture_output=True, text=True)
        assert res.returncode == 1 and message in res.stderr and "Traceback" not in res.stderr
        assert not out.exists() and list(tmp_path.glob("*.glnet*")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_cuda(tmp_path):
    img, lab = _write_pair(tmp_path)
    out = tmp_path / "m.glnet"
    # No validation area: the model of the last stage is kept, whatever its score.
    assert main(["train", str(img), "--labels", str(lab), "-o", str(out), "--device", "cuda",
                 "--epochs", "2", "--val-fraction", "0", *TINY]) == 0
    model, meta = load_model(out)
    assert meta.stages == (1, 2, 3)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_prefetcher_hands_over_batches_in_order_and_rewinds_the_rest():
    rng, plain = np.random.default_rng(7), np.random.default_rng(7)
    batches = Prefetcher(lambda: rng.integers(1000, size=3).tolist(), rng, 10)
    taken = [batches.next() for _ in range(4)]
    time.sleep(0.3)  # the thread makes batches 5 and 6 meanwhile
    batches.close()
    assert taken == [plain.integers(1000, size=3).tolist() for _ in range(4)]
    # After closing, the generator draws what it would have drawn without prefetching.
    assert rng.integers(1000, size=5).tolist() == plain.integers(1000, size=5).tolist()


def test_prefetching_trains_the_same_model(tmp_path):
    from glnet.config import TrainConfig
    from glnet.train.training import TrainOptions, train

    img, lab = _write_pair(tmp_path)
    scenes, classes = scenes_from_pairs([img], [lab])
    states = []
    for prefetch in (False, True):
        options = TrainOptions(window_size=128, patch_size=64, global_size=64,
                               epochs={1: 2, 2: 2, 3: 1}, threads=2, prefetch=prefetch,
                               loss=TrainConfig(patches_per_window=2))
        out = tmp_path / f"{prefetch}.glnet"
        result = train(scenes, classes, out, options, log=lambda text: None)
        assert result.stages_done == (1, 2, 3)
        states.append(load_model(out)[0].state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert (tmp_path / "False.glnet").read_bytes() == (tmp_path / "True.glnet").read_bytes()


def test_prefetcher_raises_what_making_a_batch_raised():
    def broken():
        raise GlnetError("labels.tif: label value 9 is outside the classes 0..2")

    batches = Prefetcher(broken, np.random.default_rng(0), 3)
    with pytest.raises(GlnetError, match="labels.tif: label value 9"):
        batches.next()
    batches.close()


def _classes(path):
    from glnet.raster.labels import read_classes_json

    return read_classes_json(path)


def test_killed_run_resumes_to_the_same_model(tmp_path):
    img, lab = _write_pair(tmp_path, size=256)
    args = [GLNET, "train", str(img), "--labels", str(lab), "--epochs", "3,2,1",
            "--windows-per-epoch", "4", "--seed", "3", *TINY]
    ref = tmp_path / "ref.glnet"
    subprocess.run([*args, "-o", str(ref)], check=True, capture_output=True)

    out = tmp_path / "killed.glnet"
    ckpt = tmp_path / "killed.glnet.ckpt"
    proc = subprocess.Popen([*args, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ckpt.exists():
        time.sleep(0.05)
    assert ckpt.exists(), "no checkpoint after the first epoch"
    time.sleep(1.0)  # inside the second epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)  # never half-written
    assert state["format"] == "glnet-qgis-checkpoint"
    res = subprocess.run([*args, "-o", str(out), "--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    a, _ = load_model(ref)
    b, meta = load_model(out)
    assert meta.stages
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, msg=k)
    assert not list(tmp_path.glob(".*.part"))
