"""Failure modes on the real CLI (issue 15): every refusal is one line naming the file or
option, exits 1 or 2, leaves nothing at the destination and the inputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from glnet.cli import main


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A 512 px synthetic scene folder (scene.tif, labels.tif, labels.gpkg, classes.json)."""
    folder = tmp_path_factory.mktemp("synth") / "d"
    assert main(["synth", str(folder), "--size", "512", "--seed", "1"]) == 0
    return folder


def glnet(capsys, *args) -> tuple[int, str]:
    """Run ``glnet ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *names) -> None:
    assert code in (1, 2), err
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "internal error" not in err and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], err


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def write_like(src: Path, dst: Path, change) -> Path:
    """A copy of the raster ``src`` whose first band array went through ``change``."""
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    change(data)
    with rasterio.open(dst, "w", **profile) as ds:
        ds.write(data)
    return dst


# -- 1. train with a validation score that is NaN ------------------------------------------

def test_train_keeps_the_last_model_when_validation_has_no_labels(scene, tmp_path, capsys):
    def unlabel_right(a):
        a[:, :, 350:] = 255  # the validation strip (right 20%) has no labels
    labels = write_like(scene / "labels.tif", tmp_path / "left.tif", unlabel_right)
    out = tmp_path / "m.glnet"
    code, err = glnet(capsys, "train", scene / "scene.tif", "--labels", labels, "-o", out,
                      "--stages", "1", "--epochs", "1", "--windows-per-epoch", "1",
                      "--window", "128", "--patch", "64", "--global-size", "64", "--quiet")
    assert code == 0, err
    assert out.exists() and "no labelled pixels in the validation area" in err
    assert main(["info", str(out)]) == 0


@pytest.mark.parametrize("option,value,named", [
    ("--epochs", "0", "epochs"), ("--window", "7", "window size"), ("--threads", "-3", "threads"),
    ("--threads", "0", "threads"), ("--lr", "-1", "learning rate"),
    ("--val-fraction", "-0.5", "validation fraction"), ("--val-fraction", "1", "validation fraction"),
    ("--patches-per-window", "0", "patches per window"), ("--patch", "512", "patch size"),
    ("--max-minutes", "-1", "max minutes")])
def test_train_refuses_absurd_options(scene, tmp_path, capsys, option, value, named):
    out = tmp_path / "m.glnet"
    code, err = glnet(capsys, "train", scene / "scene.tif", "--labels", scene / "labels.tif",
                      "-o", out, "--window", "256", option, value)
    one_line_error(code, err, named)
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_single_class_without_background(scene, tmp_path, capsys):
    out = tmp_path / "m.glnet"
    code, err = glnet(capsys, "train", scene / "scene.tif", "--labels", scene / "labels.gpkg",
                      "--class-name", "building", "--unlabelled", "ignore", "-o", out)
    one_line_error(code, err, "only one class")
    assert list(tmp_path.iterdir()) == []


# -- 2. and 3. crafted, truncated and corrupted model files --------------------------------

@pytest.fixture
def model(tmp_path, tiny_cfg) -> Path:
    from glnet.modelfile import default_meta, save_model
    from glnet.nn.glnet import GLNet

    return save_model(GLNet(tiny_cfg), default_meta(tiny_cfg, stages=(1,)), tmp_path / "m.glnet")


def rewrite_header(path: Path, dst: Path, change) -> Path:
    """A copy of ``path`` at ``dst`` whose safetensors header went through ``change(header)``."""
    import json
    import struct

    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + length:])
    return dst


def refused_by_segment(capsys, scene, model_path, tmp_path, *names) -> None:
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    before = digest(scene / "scene.tif", model_path)
    code, err = glnet(capsys, "segment", scene / "scene.tif", "-m", model_path, "-o", out)
    one_line_error(code, err, model_path, *names)
    assert list(out.parent.iterdir()) == [] and digest(scene / "scene.tif", model_path) == before


def test_a_crafted_model_is_refused_from_its_tensor_table(scene, model, tmp_path, capsys):
    import json
    import resource

    def absurd(header):  # metadata of a 4-billion-parameter network, no tensors for it
        meta = json.loads(header["__metadata__"]["glnet"])
        meta["net"].update(backbone="resnet50", in_channels=64, fpn_channels=2048,
                           smooth_channels=2048)
        meta.update(bands=[f"b{i}" for i in range(64)], mean=[0.0] * 64, std=[1.0] * 64)
        header["__metadata__"]["glnet"] = json.dumps(meta)
        del header["__metadata__"]["sha256"]
    crafted = rewrite_header(model, tmp_path / "absurd.glnet", absurd)
    head = crafted.read_bytes()[:8 + int.from_bytes(crafted.read_bytes()[:8], "little")]
    crafted.write_bytes(head)  # the tensor table only: the file has no data at all
    assert crafted.stat().st_size < 100_000
    one_line_error(*glnet(capsys, "info", crafted), crafted, "truncated")
    meta_only = rewrite_header(crafted, tmp_path / "meta-only.glnet", lambda header: [header.pop(k) for k in list(header)
                                                        if k != "__metadata__"])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from glnet.modelfile import load_model
    with pytest.raises(Exception, match="weights do not match"):
        load_model(meta_only)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200_000  # KiB

    def huge(header):  # a tensor claiming gigabytes that the file does not hold
        header["aggregation.weight"]["shape"] = [2**20, 2**20, 1, 1]
    crafted = rewrite_header(model, tmp_path / "huge.glnet", huge)
    refused_by_segment(capsys, scene, crafted, tmp_path, "corrupt model file")


def test_a_truncated_or_corrupted_model_is_reported_broken(scene, model, tmp_path, capsys):
    blob = model.read_bytes()
    truncated = tmp_path / "truncated.glnet"
    truncated.write_bytes(blob[:-1000])
    one_line_error(*glnet(capsys, "info", truncated), truncated, "truncated")
    flipped = bytearray(blob)
    flipped[-5000] ^= 0xFF
    corrupted = tmp_path / "corrupted.glnet"
    corrupted.write_bytes(bytes(flipped))
    one_line_error(*glnet(capsys, "info", corrupted), corrupted, "checksum")
    refused_by_segment(capsys, scene, corrupted, tmp_path, "checksum")

    def wrong(header):
        header["__metadata__"]["sha256"] = "0" * 64
    wrong_sum = rewrite_header(model, tmp_path / "wrong.glnet", wrong)
    one_line_error(*glnet(capsys, "info", wrong_sum), wrong_sum, "checksum")


def test_a_model_from_before_checksums_still_loads(model, capsys):
    from glnet.modelfile import load_model

    old = rewrite_header(model, model, lambda header: header["__metadata__"].pop("sha256"))
    assert glnet(capsys, "info", old) == (0, "")
    load_model(old)


# -- 5. two runs to one output ---------------------------------------------------------------

def test_an_output_that_appears_during_a_run_is_not_replaced(scene, model, tmp_path, capsys):
    import threading
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "mask.tif"
    stop = threading.Event()

    def other_run():  # finishes first, while this run is still segmenting
        while not stop.is_set():
            if any(p.name.startswith(".mask.tif.") for p in out_dir.iterdir()):
                out.write_bytes(b"the other run's mask")
                return
            time.sleep(0.001)
    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        code, err = glnet(capsys, "segment", scene / "scene.tif", "-m", model, "-o", out,
                          "--mode", "1", "--no-overviews")
    finally:
        stop.set()
        thread.join()
    one_line_error(code, err, out, "appeared while this run was writing it")
    assert out.read_bytes() == b"the other run's mask"
    assert sorted(p.name for p in out_dir.iterdir()) == ["mask.tif"]


# -- 6. NaN and infinite pixels ---------------------------------------------------------------

def test_nonfinite_pixels_are_nodata_with_one_warning(scene, model, tmp_path, capsys):
    with rasterio.open(scene / "scene.tif") as ds:
        data, profile = ds.read().astype("float32") / 255, ds.profile
    data[0, 10:20, 10:20] = np.nan      # 100 pixels
    data[1, 300:305, 400:410] = np.inf  # 50
    data[2, 500:502, 0:5] = -np.inf     # 10
    profile.update(dtype="float32", photometric="MINISBLACK", predictor=1)
    float_scene = tmp_path / "float.tif"
    with rasterio.open(float_scene, "w", **profile) as ds:
        ds.write(data)
    out = tmp_path / "mask.tif"
    capsys.readouterr()
    assert main(["segment", str(float_scene), "-m", str(model), "-o", str(out), "--mode", "1",
                 "--no-overviews"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "warning" in line and "NaN" in line] == [
        "glnet segment: warning: 160 pixel(s) of NaN or infinite values treated as nodata "
        "(255 in the mask)"]
    with rasterio.open(out) as ds:
        mask = ds.read(1)
    bad = ~np.isfinite(data).all(axis=0)
    assert (mask[bad] == 255).all() and (mask[~bad] != 255).all()


# -- 8. a full disk --------------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A 2 MiB tmpfs, filled up but for nothing; skipped where mounting is not permitted."""
    import subprocess

    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with open(folder / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_is_called_a_full_disk(scene, model, full_disk, capsys):
    commands = [
        ("synth", full_disk / "s", "--size", "512"),
        ("segment", scene / "scene.tif", "-m", model, "-o", full_disk / "mask.tif", "--mode", "1"),
        ("vectorize", scene / "labels.tif", "-o", full_disk / "labels.gpkg"),
        ("train", scene / "scene.tif", "--labels", scene / "labels.tif", "-o",
         full_disk / "m.glnet", "--stages", "1", "--epochs", "1", "--windows-per-epoch", "1",
         "--window", "128", "--patch", "64", "--global-size", "64", "--quiet"),
    ]
    for args in commands:
        code, err = glnet(capsys, *args)
        path = args[1] if args[0] == "synth" else args[args.index("-o") + 1]
        one_line_error(code, err, f"{path}: no space left on device")
        assert [p.name for p in full_disk.iterdir()] == ["filler"], args[0]


# -- 7. and 9. errors that name the option or the file ---------------------------------------

def test_segment_option_and_input_errors_name_them(scene, model, tmp_path, capsys):
    out = tmp_path / "mask.tif"
    base = ("segment", scene / "scene.tif", "-m", model, "-o", out)
    one_line_error(*glnet(capsys, *base, "--refine-threshold", "7"), "refine threshold")
    one_line_error(*glnet(capsys, *base, "--window", "7"), "window size 7")
    one_line_error(*glnet(capsys, *base, "--threads", "0"), "threads")
    aoi = tmp_path / "aoi.geojson"  # no CRS, so WGS 84 by the spec, but in UTM metres
    aoi.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                   '"properties": {}, "geometry": {"type": "Polygon", "coordinates": '
                   '[[[500000, 4000000], [500100, 4000000], [500100, 4000100], '
                   '[500000, 4000000]]]}}]}')
    one_line_error(*glnet(capsys, *base, "--aoi", aoi), aoi, "not degrees")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes((scene / "scene.tif").read_bytes()[:20000])
    one_line_error(*glnet(capsys, "segment", truncated, "-m", model, "-o", out, "--mode", "1"),
                   truncated, "truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aoi.geojson", "m.glnet",
                                                          "truncated.tif"]


def test_train_input_errors_name_the_file(scene, tmp_path, capsys):
    import fiona

    empty = tmp_path / "empty.gpkg"
    with fiona.open(empty, "w", driver="GPKG", crs="EPSG:32633", layer="labels",
                    schema={"geometry": "Polygon", "properties": {"class_id": "int"}}):
        pass
    out = tmp_path / "m.glnet"
    one_line_error(*glnet(capsys, "train", scene / "scene.tif", "--labels", empty, "-o", out),
                   empty, "no features")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes((scene / "scene.tif").read_bytes()[:20000])
    one_line_error(*glnet(capsys, "train", truncated, "--labels", scene / "labels.tif", "-o", out,
                          "--window", "128"), truncated, "truncated")
    assert not out.exists() and not list(tmp_path.glob(".m.glnet*"))


def test_a_deeply_nested_model_header_is_not_a_recursion_error(tmp_path, capsys):
    deep = tmp_path / "deep.glnet"
    text = b"[" * 100_000 + b"]" * 100_000
    deep.write_bytes(len(text).to_bytes(8, "little") + text)
    one_line_error(*glnet(capsys, "info", deep), deep, "not JSON")


def test_vectorize_names_absent_classes_and_says_when_nothing_was_sieved(scene, tmp_path, capsys):
    out = tmp_path / "p.gpkg"
    one_line_error(*glnet(capsys, "vectorize", scene / "labels.tif", "-o", out, "--classes", "42"),
                   scene / "labels.tif", "classes 42")
    assert not out.exists()
    plain = tmp_path / "plain.tif"  # no class table: an absent class gives an empty layer
    with rasterio.open(plain, "w", driver="GTiff", width=50, height=600, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 600)) as ds:
        ds.write(np.repeat(np.arange(2, dtype=np.uint8), 300)[:, None].repeat(50, 1), 1)
    assert main(["vectorize", str(plain), "-o", str(out), "--classes", "42",
                 "--block-size", "100"]) == 0
    capsys.readouterr()
    assert main(["vectorize", str(plain), "-o", str(out), "--min-pixels", "2",
                 "--overwrite"]) == 0
    assert "no regions under 2 px to sieve" in capsys.readouterr().out


# -- 11. odds and ends -----------------------------------------------------------------------

def test_import_official_tells_what_a_file_is(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "m.glnet"
    for path, said in ((notes, "not a PyTorch checkpoint"), (tmp_path, "is a folder"),
                       (Path("/dev/zero"), "not a regular file")):
        one_line_error(*glnet(capsys, "import-official", path, path, "-o", out), path, said)
    assert not out.exists()


def test_resume_refuses_other_settings_and_a_finished_run(scene, tmp_path, capsys):
    out = tmp_path / "m.glnet"
    args = ["train", scene / "scene.tif", "--labels", scene / "labels.tif", "-o", out,
            "--stages", "1", "--epochs", "1", "--windows-per-epoch", "1", "--window", "128",
            "--patch", "64", "--global-size", "64", "--quiet"]
    assert glnet(capsys, *args)[0] == 0
    before = digest(out, out.with_name("m.glnet.ckpt"))
    one_line_error(*glnet(capsys, *args, "--resume", "--seed", "5"), "m.glnet.ckpt", "seed")
    one_line_error(*glnet(capsys, *args, "--resume"), "m.glnet.ckpt", "has finished")
    assert digest(out, out.with_name("m.glnet.ckpt")) == before


@pytest.mark.parametrize("field,value,said", [("std", float("nan"), "std"),
                                              ("classes", 255, "class values")])
def test_model_metadata_refuses_nan_std_and_class_values_out_of_range(model, tmp_path, capsys,
                                                                     field, value, said):
    import json

    def change(header):
        meta = json.loads(header["__metadata__"]["glnet"])
        if field == "std":
            meta["std"][0] = value
        else:
            meta["classes"][-1]["value"] = value
        header["__metadata__"]["glnet"] = json.dumps(meta)
    bad = rewrite_header(model, tmp_path / "bad.glnet", change)
    one_line_error(*glnet(capsys, "info", bad), bad, said)


def test_segment_refuses_a_mask_name_that_is_not_a_geotiff(scene, model, tmp_path, capsys):
    out = tmp_path / "mask.png"
    one_line_error(*glnet(capsys, "segment", scene / "scene.tif", "-m", model, "-o", out),
                   out, ".tif")
    assert not out.exists()
