"""``python -m glnet.demo``: the main job end to end on a small scene, and what it leaves behind.

One demo run (1024 px, 0.3 training minutes: about a minute on two cores) feeds every test
of the module; the tests check the files it lists, not the model's accuracy.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio

from glnet import demo

SYSTEM_PYTHON = "/usr/bin/python3"
SIZE = 1024
TIMEOUT = 900


def qgis_python_works() -> bool:
    """Whether QGIS's Python imports qgis (what the demo needs for qgis.png)."""
    try:
        proc = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True,
                              timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    except OSError:
        return False
    return proc.returncode == 0


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and a check that it is a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def glnet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glnet.cli", "--progress", "none", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One demo run: its output folder and its stdout."""
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    proc = subprocess.run(
        [sys.executable, "-m", "glnet.demo", str(out), "--size", str(SIZE), "--steps", "4,3,2"],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


pytestmark = pytest.mark.slow


def test_demo_writes_every_file_it_lists(run):
    out, stdout = run
    for name in ("scene/scene.tif", "scene/labels.tif", "scene/labels.gpkg", "scene/classes.json",
                 "model.glnet", "mask.tif", "mask.qml", "polygons.gpkg", "evaluation.json",
                 "quicklook.png", "confusion.png", "report.md"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} is missing or empty"
    # The resume checkpoint is of no use in a demo and three times the model's size.
    assert not (out / "model.glnet.ckpt").exists()
    report = (out / "report.md").read_text()
    # Every file the report's "Files:" line names exists.
    files_line = next(line for line in report.splitlines() if line.startswith("Files:"))
    for name in re.findall(r"`([^`]+)`", files_line):
        assert (out / name).exists(), f"report lists {name}, which is missing"
    for picture in ("quicklook.png", "confusion.png"):
        assert f"![{picture}]({picture})" in report
        width, height = png_size(out / picture)
        assert width > 300 and height > 200
    for step in ("synth", "train", "segment", "vectorize", "evaluate"):
        assert re.search(rf"^\| {step} \| [0-9.]+ \| [0-9]+ \| `glnet {step} ", report, re.M), step
    assert "mIoU " in stdout and "report:" in stdout


def test_mask_is_a_cog_on_the_scene_grid(run):
    out, _ = run
    with rasterio.open(out / "scene" / "scene.tif") as scene, rasterio.open(out / "mask.tif") as mask:
        assert mask.driver == "GTiff"
        assert mask.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert mask.crs == scene.crs and mask.crs is not None
        assert mask.transform == scene.transform
        assert (mask.width, mask.height) == (scene.width, scene.height) == (SIZE, SIZE)
        assert mask.count == 1 and mask.dtypes[0] == "uint8" and mask.nodata == 255
        assert mask.block_shapes[0] == (512, 512) and mask.overviews(1)
        classes = json.loads(mask.tags()["GLNET_CLASSES"])
        values = np.unique(mask.read(1))
    names = [c["name"] for c in classes]
    assert names == [c["name"] for c in json.loads((out / "scene" / "classes.json").read_text())]
    assert set(values.tolist()) <= {c["value"] for c in classes}
    qml = (out / "mask.qml").read_text()
    assert 'type="paletted"' in qml and all(f'label="{n}"' in qml for n in names)


def test_polygons_have_features_on_the_scene_crs(run):
    out, _ = run
    with rasterio.open(out / "mask.tif") as mask:
        crs, values = mask.crs, set(np.unique(mask.read(1)).tolist()) - {255}
    with fiona.open(out / "polygons.gpkg") as src:
        assert len(src) > 0
        assert {"class_id", "class_name", "area_m2", "perimeter_m"} <= set(src.schema["properties"])
        assert rasterio.crs.CRS.from_user_input(src.crs) == crs
        ids = {f["properties"]["class_id"] for f in src}
        area = sum(f["properties"]["area_m2"] for f in src)
    assert ids <= values
    with rasterio.open(out / "mask.tif") as mask:
        scene_area = mask.width * mask.height * abs(mask.transform.a * mask.transform.e)
    # Sieving moves pixels between classes but the polygons still tile the whole mask.
    assert area == pytest.approx(scene_area, rel=1e-6)


def test_report_miou_is_what_glnet_evaluate_prints(run):
    out, _ = run
    proc = glnet("evaluate", str(out / "mask.tif"), str(out / "scene" / "labels.tif"), "--json")
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    report = (out / "report.md").read_text()
    miou = float(re.search(r"mIoU \*\*([0-9.]+)\*\*", report).group(1))
    assert f"{miou:.4f}" == f"{fresh['miou']:.4f}"
    for c in fresh["classes"]:
        iou = "-" if c["iou"] is None else f"{c['iou']:.4f}"
        assert f"| {c['value']} {c['name']} | {iou} |" in report
    assert json.loads((out / "evaluation.json").read_text())["miou"] == fresh["miou"]


def test_qgis_picture_when_qgis_is_available(run):
    out, stdout = run
    report = (out / "report.md").read_text()
    if not qgis_python_works():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {SYSTEM_PYTHON} cannot import qgis", pytrace=False)
        assert not (out / "qgis.png").exists()
        assert "No QGIS picture: QGIS is not available" in report
        pytest.skip(f"{SYSTEM_PYTHON} cannot import qgis: checked the report's note only")
    png = out / "qgis.png"
    assert png.is_file(), stdout
    width, height = png_size(png)
    assert width >= 1000 and height > width  # a square scene, a title above, a legend below
    assert "![qgis.png](qgis.png)" in report and "-m glnet_qgis.render" in report
    assert "mask style mask.qml" in stdout  # the segmenter's style, not a fallback
    import matplotlib.image

    image = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(np.int16)
    # The map (below the title band) is drawn, not left blank, and the legend shows every
    # class colour of the mask exactly (the swatches are opaque).
    map_part = image[60:60 + 900, 20:-20]
    assert len(np.unique(map_part.reshape(-1, 3), axis=0)) > 1000
    with rasterio.open(out / "mask.tif") as mask:
        classes = json.loads(mask.tags()["GLNET_CLASSES"])
    legend = image[44 + width - 24:].reshape(-1, 3)  # below the title band and the square map
    for c in classes:
        assert (np.abs(legend - np.array(c["color"][:3])).sum(1) == 0).any(), c["name"]


def test_qgis_picture_without_qgis_is_a_note(tmp_path):
    # A Python without QGIS (this venv's): no picture, no exception, a note saying why.
    lines = []
    result = demo.qgis_picture(tmp_path / "qgis.png", tmp_path / "scene.tif", tmp_path / "mask.tif",
                               tmp_path / "polygons.gpkg", sys.executable, lines.append)
    assert result.path is None and not (tmp_path / "qgis.png").exists()
    assert "QGIS is not available" in result.note and "qgis" in result.note
    assert any("no QGIS picture" in line for line in lines)
    result = demo.qgis_picture(tmp_path / "qgis.png", tmp_path / "scene.tif", tmp_path / "mask.tif",
                               tmp_path / "polygons.gpkg", str(tmp_path / "no-python"), lines.append)
    assert result.path is None and "No such file" in result.note
