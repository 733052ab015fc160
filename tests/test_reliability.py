"""Failure modes on the real CLI (issue 15): every refusal is one line naming the file or
option, exits 1 or 2, leaves nothing at the destination and the inputs untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import rasterio

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
