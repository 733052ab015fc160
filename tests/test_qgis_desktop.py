"""The segment dialog in the real QGIS desktop, under Xvfb.

QGIS starts with ``--code`` and a script (DESKTOP) that, for each case, adds
the input image to an empty project, opens *Segment land cover (GLNet)*
through ``processing.createAlgorithmDialog`` with the case's parameters,
presses Run, waits for the dialog's ``algorithmFinished`` and records the
dialog's log, the layers that Processing loaded (names, renderers, opacity,
symbols, extents, CRS, drawing order) and three screenshots (the dialog, its
log, the main window). The cases: a georeferenced GeoTIFF, a PNG without
georeferencing, a file that is no model, and "cuda" on a machine without a
GPU. Screenshots go to GLNET_SCREENSHOTS when it names a folder, else into the
test's temporary folder. The README's picture is the georeferenced case's map
with the demo's scene and model in its place (GLNET_DESKTOP_SCENE,
GLNET_DESKTOP_MODEL).

Debian's xvfb provides Xvfb; without it the test is skipped, except under
CI=true, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from qgis_support import Qgis, checkout_qgis, require_qgis
from test_qgis_ux import tiny_model, write_png

pytestmark = pytest.mark.qgis

XVFB = shutil.which("Xvfb")
QGIS_DESKTOP = Path("/usr/bin/qgis")

DESKTOP = r'''
import json, os, time
from qgis.utils import iface
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication, QTextEdit
from qgis.core import QgsProject, QgsRasterLayer

CFG = json.load(open(os.environ['GLNET_DESKTOP_TEST']))
RESULT = {'cases': {}}


def save():
    with open(CFG['result'], 'w') as f:
        json.dump(RESULT, f)


def guarded(fn):
    """An error ends the run with its traceback (QGIS would show a modal error dialog)."""
    def call(*args):
        try:
            fn(*args)
        except BaseException:
            import traceback
            RESULT['error'] = traceback.format_exc()
            save()
            os._exit(1)
    return call


def shot(widget, name):
    QApplication.processEvents()
    widget.grab().save(os.path.join(CFG['shots'], name))


def describe(layer):
    e = layer.extent()
    item = {'name': layer.name(), 'source': layer.source().split('|')[0],
            'extent': [e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum()],
            'crs': layer.crs().authid(), 'renderer': layer.renderer().type()}
    if isinstance(layer, QgsRasterLayer):
        item['opacity'] = layer.renderer().opacity()
    else:
        categories = layer.renderer().categories()  # kept: each symbol lives in its category
        symbol = categories[0].symbol().symbolLayer(0)
        item.update(symbol=symbol.layerType(), brush=int(symbol.brushStyle()),
                    categories=len(categories))
    return item


@guarded
def run_case(index=0):
    if index == len(CFG['cases']):
        save()
        os._exit(0)
    case = CFG['cases'][index]
    project = QgsProject.instance()
    project.removeAllMapLayers()
    image = iface.addRasterLayer(case['params']['INPUT'], 'image')
    before = set(project.mapLayers())
    import processing
    dlg = processing.createAlgorithmDialog(CFG['algorithm'], case['params'])
    dlg.resize(1000, 640)
    dlg.show()
    shot(dlg, case['name'] + '-dialog.png')
    state = {'started': time.monotonic()}
    dlg.algorithmFinished.connect(lambda ok, results: state.update(ok=ok))
    dlg.runAlgorithm()

    @guarded
    def poll():
        if 'ok' not in state and time.monotonic() - state['started'] < CFG['timeout']:
            QTimer.singleShot(200, poll)
            return
        QApplication.processEvents()
        added = [project.mapLayer(i) for i in project.mapLayers() if i not in before]
        RESULT['cases'][case['name']] = {
            'ok': state.get('ok'), 'log': dlg.findChild(QTextEdit, 'txtLog').toPlainText(),
            'image': describe(image), 'layers': [describe(layer) for layer in added],
            'order': [layer.name() for layer in project.layerTreeRoot().layerOrder()]}
        shot(dlg, case['name'] + '-log.png')
        iface.mapCanvas().setExtent(image.extent())
        iface.mapCanvas().refreshAllLayers()

        @guarded
        def finish():
            shot(iface.mainWindow(), case['name'] + '-map.png')
            dlg.close()
            run_case(index + 1)
        QTimer.singleShot(1500, finish)  # the canvas renders in the background
    QTimer.singleShot(200, poll)


QTimer.singleShot(500, run_case)
'''


@pytest.fixture(scope="module")
def display():
    """A private X display from Debian's Xvfb."""
    require_qgis()
    if XVFB is None or not QGIS_DESKTOP.is_file():
        message = "Xvfb or /usr/bin/qgis is missing: apt-get install xvfb qgis"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {message}", pytrace=False)
        pytest.skip(message)
    number = next(n for n in range(99, 199) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                  and not Path(f"/tmp/.X{n}-lock").exists())
    proc = subprocess.Popen([XVFB, f":{number}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.1)
    yield f":{number}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def qgis(tmp_path_factory) -> Qgis:
    return checkout_qgis(tmp_path_factory)


def write_scene(path: Path) -> Path:
    """A georeferenced 3-band GeoTIFF (UTM 33N, 0.5 m) of random pixels."""
    import rasterio
    from rasterio.transform import from_origin

    image = np.random.default_rng(1).integers(0, 255, (3, 96, 128), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=128, height=96, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 0.5, 0.5)) as ds:
        ds.write(image)
    return path


def run_desktop(qgis: Qgis, display: str, cases: list[dict], work: Path, shots: Path) -> dict:
    config = {"algorithm": "glnet:segmentlandcover", "timeout": 120, "shots": str(shots),
              "result": str(work / "result.json"), "cases": cases}
    (work / "config.json").write_text(json.dumps(config))
    (work / "desktop.py").write_text(DESKTOP)
    env = {k: v for k, v in qgis.env.items() if k != "QT_QPA_PLATFORM"}
    env.update(DISPLAY=display, GLNET_DESKTOP_TEST=str(work / "config.json"))
    proc = subprocess.run([str(QGIS_DESKTOP), "--nologo", "--noversioncheck", "--code",
                           str(work / "desktop.py")], env=env, cwd=qgis.home,
                          capture_output=True, text=True, timeout=120 * len(cases) + 60)
    assert (work / "result.json").is_file(), (proc.returncode, proc.stdout[-3000:],
                                              proc.stderr[-3000:])
    result = json.loads((work / "result.json").read_text())
    assert "error" not in result, result["error"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    return result["cases"]


def test_the_segment_dialog_loads_styled_results_that_lie_on_the_image(qgis, display, tmp_path):
    import torch

    shots = Path(os.environ.get("GLNET_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    from glnet.modelfile import read_metadata

    scene = Path(os.environ.get("GLNET_DESKTOP_SCENE") or write_scene(tmp_path / "parcel.tif"))
    png = write_png(tmp_path / "photo.png", height=64, width=96)
    model = tiny_model(tmp_path / "tiny.glnet")
    scene_model = Path(os.environ.get("GLNET_DESKTOP_MODEL") or model)
    (tmp_path / "broken.glnet").write_bytes(b"not a model")
    cases = [
        {"name": "georeferenced", "params": {
            "INPUT": str(scene), "MODEL": str(scene_model),
            "OUTPUT": str(tmp_path / "parcel_classes.tif"),
            "POLYGONS": str(tmp_path / "parcel_polygons.gpkg")}},
        {"name": "png", "params": {
            "INPUT": str(png), "MODEL": str(model), "OUTPUT": str(tmp_path / "photo_classes.tif"),
            "POLYGONS": str(tmp_path / "photo_polygons.gpkg")}},
        {"name": "broken-model", "params": {
            "INPUT": str(scene), "MODEL": str(tmp_path / "broken.glnet"),
            "OUTPUT": str(tmp_path / "broken_classes.tif")}},
    ]
    if not torch.cuda.is_available():
        cases.append({"name": "cuda", "params": {
            "INPUT": str(scene), "MODEL": str(model), "DEVICE": 1,
            "OUTPUT": str(tmp_path / "cuda_classes.tif")}})
    results = run_desktop(qgis, display, cases, tmp_path, shots)

    classes = {"georeferenced": len(read_metadata(scene_model).class_names), "png": 3}
    for name, stem in (("georeferenced", "parcel"), ("png", "photo")):
        run = results[name]
        assert run["ok"] is True, run["log"]
        image = run["image"]
        mask, polygons = run["layers"]
        # Layers named after their files, drawn polygons over mask over image.
        assert [mask["name"], polygons["name"]] == [f"{stem}_classes", f"{stem}_polygons"]
        assert run["order"] == [f"{stem}_polygons", f"{stem}_classes", "image"]
        # The mask semi-transparent in its class palette; the polygons class-coloured outlines.
        assert mask["renderer"] == "paletted" and mask["opacity"] == 0.5
        assert polygons["renderer"] == "categorizedSymbol" and polygons["categories"] == classes[name]
        assert polygons["symbol"] == "SimpleFill" and polygons["brush"] == 0  # Qt.NoBrush
        # Both lie on the image: same extent, same CRS (none for the PNG).
        for layer in (mask, polygons):
            assert layer["extent"] == pytest.approx(image["extent"], abs=1e-6), (name, layer)
            assert layer["crs"] == image["crs"], (name, layer)
    assert results["georeferenced"]["image"]["crs"]
    assert results["png"]["image"]["crs"] == ""
    assert results["png"]["log"].count("photo.png is not georeferenced") == 1

    # Errors: once each in the dialog's log, nothing written.
    broken = results["broken-model"]
    assert broken["ok"] is False and broken["layers"] == []
    assert broken["log"].count("not a GLNet model file") == 1, broken["log"]
    if "cuda" in results:
        cuda = results["cuda"]
        assert cuda["ok"] is False and cuda["layers"] == []
        assert cuda["log"].count("no CUDA GPU is available to torch") == 1, cuda["log"]
    assert not any(tmp_path.glob("broken_classes*")) and not any(tmp_path.glob("cuda_classes*"))
    for name in results:
        for kind in ("dialog", "log", "map"):
            assert (shots / f"{name}-{kind}.png").stat().st_size > 10_000, (name, kind)
