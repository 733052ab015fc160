"""The GLNet Processing algorithms in the real QGIS, against the engine's CLI (no mocks).

Each algorithm runs through ``qgis_process`` (or, for the batch dialog and
cancellation, through a PyQGIS script with QGIS's own Python) in a throwaway
profile, with the engine in a worker process: GLNET_PYTHON is this virtual
environment's Python. Results are compared with the ``glnet`` command run
with the same settings: masks pixel for pixel (and file for file), polygons
feature for feature, scores number for number, trained models byte for byte.

Data: small synthetic GeoTIFFs written here with rasterio, and a tiny model
trained by the CLI (128 px windows, 64 px patches, one epoch of two windows).

"Batch" is QGIS's batch processing dialog itself (processing.gui's
BatchAlgorithmDialog, offscreen): a saved batch of two scenes is opened with
the dialog's own Open code and run with "Load layers on completion", which
also checks that the loaded masks carry the class colours and names.
qgis_process has no batch mode, and two separate runs would test nothing that
the other tests do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fiona
import numpy as np
import pytest
import rasterio
from qgis_support import (
    ROOT,
    SYSTEM_PYTHON,
    Qgis,
    build_plugin_zip,
    install_zip,
)
from rasterio.transform import from_origin
from safetensors.numpy import load_file

from glnet.modelfile import read_metadata

pytestmark = pytest.mark.qgis

ENGINE_PYTHON = sys.executable
ALGORITHMS = {
    "glnet:segmentlandcover": "Segment land cover (GLNet)",
    "glnet:train": "Train GLNet model",
    "glnet:vectorize": "Vectorize land-cover mask",
    "glnet:evaluate": "Evaluate segmentation",
    "glnet:importofficial": "Import released GLNet checkpoints",
    "glnet:modelinfo": "Model information",
    "glnet:quantize": "Make int8 model branches for OpenVINO",
    "glnet:setupengine": "Set up the GLNet engine",
}
MODEL3 = ROOT / "resources" / "models" / "segment_and_vectorize.model3"
# The example model, loaded by the provider from glnet_qgis/models.
EXAMPLE_MODEL = "glnet:Segment and vectorize land cover"
CRS = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)
RES = 0.5
# Tiny training: the same for the CLI and QGIS runs, deterministic on one thread.
TRAIN_CLI = ["--window", "128", "--patch", "64", "--global-size", "64", "--epochs", "1",
             "--windows-per-epoch", "2", "--threads", "1", "--seed", "3"]
TRAIN_QGIS = ["WINDOW=128", "PATCH=64", "GLOBAL_SIZE=64", "EPOCHS=1", "WINDOWS_PER_EPOCH=2",
              "THREADS=1", "SEED=3"]
CLASS_NAMES = ("water", "forest", "bare soil")
COLOURS = np.array([[40, 70, 150], [50, 125, 55], [205, 180, 130]], dtype=np.float32)


# --------------------------------------------------------------------------- data


def glnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The engine's CLI, as a user runs it."""
    proc = subprocess.run([ENGINE_PYTHON, "-m", "glnet.cli", "--progress", "none", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def labels_of(height: int, width: int, seed: int) -> np.ndarray:
    """Blocky class values 0..2 (a few rectangles of each class)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((height, width), np.uint8)
    for value in (1, 2, 1, 2, 1):
        h, w = rng.integers(height // 5, height // 2), rng.integers(width // 5, width // 2)
        r, c = rng.integers(0, height - h), rng.integers(0, width - w)
        lab[r:r + h, c:c + w] = value
    return lab


def write_scene(folder: Path, name: str, height: int, width: int, seed: int,
                bands: int = 3) -> tuple[Path, Path]:
    """``NAME.tif`` (uint8 image, colours of its classes plus noise) and ``NAME_labels.tif``."""
    lab = labels_of(height, width, seed)
    rng = np.random.default_rng(seed + 1)
    img = COLOURS[lab].transpose(2, 0, 1) + rng.normal(0, 12, (3, height, width))
    img = np.clip(img, 0, 255).astype(np.uint8)[:bands]
    profile = dict(driver="GTiff", width=width, height=height, crs=CRS,
                   transform=from_origin(*ORIGIN, RES, RES))
    image = folder / f"{name}.tif"
    with rasterio.open(image, "w", count=bands, dtype="uint8", photometric="MINISBLACK",
                       **profile) as ds:
        ds.write(img)
    labels = folder / f"{name}_labels.tif"
    with rasterio.open(labels, "w", count=1, dtype="uint8", nodata=255, **profile) as ds:
        ds.write(lab, 1)
    return image, labels


def write_polygons(path: Path, layer: str, features: list[tuple[tuple, dict]],
                   properties: dict[str, str]) -> None:
    schema = {"geometry": "Polygon", "properties": properties}
    with fiona.open(path, "w", driver="GPKG", crs=CRS, schema=schema, layer=layer) as dst:
        for (x0, y0, x1, y1), props in features:
            ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
            dst.write({"geometry": {"type": "Polygon", "coordinates": [ring]},
                       "properties": props})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    a, a_labels = write_scene(folder, "scene_a", 192, 192, seed=1)
    b, b_labels = write_scene(folder, "scene_b", 160, 224, seed=2)
    grey, _ = write_scene(folder, "grey", 160, 160, seed=4, bands=1)
    x0, y1 = ORIGIN
    # A GeoPackage of two layers: the AOI is the second (QGIS passes its name on).
    vectors = folder / "vectors.gpkg"
    write_polygons(vectors, "other", [((x0, y1 - 10, x0 + 10, y1), {"name": "x"})],
                   {"name": "str"})
    write_polygons(vectors, "aoi", [((x0 + 8, y1 - 90, x0 + 70, y1 - 6), {"name": "a"}),
                                    ((x0 + 40, y1 - 95, x0 + 92, y1 - 60), {"name": "b"})],
                   {"name": "str"})
    # Reference polygons with class names, for evaluate.
    reference = folder / "reference.gpkg"
    write_polygons(reference, "reference",
                   [((x0, y1 - 96, x0 + 96, y1), {"kind": "water"}),
                    ((x0 + 20, y1 - 60, x0 + 60, y1 - 20), {"kind": "forest"}),
                    ((x0 + 60, y1 - 90, x0 + 90, y1 - 50), {"kind": "bare soil"})],
                   {"kind": "str"})
    classes = folder / "classes.json"
    palette = ((31, 120, 180), (51, 160, 44), (253, 191, 111))
    classes.write_text(json.dumps([{"value": i, "name": n, "color": list(c)} for i, (n, c)
                                   in enumerate(zip(CLASS_NAMES, palette))]), encoding="utf-8")
    return {"folder": folder, "a": a, "a_labels": a_labels, "b": b, "b_labels": b_labels,
            "grey": grey, "vectors": vectors, "reference": reference, "classes": classes}


@pytest.fixture(scope="module")
def cli_model(data, tmp_path_factory) -> Path:
    """A tiny model trained by the CLI."""
    out = tmp_path_factory.mktemp("cli-model") / "tiny.glnet"
    glnet("train", str(data["a"]), "--labels", str(data["a_labels"]), "--classes",
          str(data["classes"]), "-o", str(out), *TRAIN_CLI)
    return out


@pytest.fixture(scope="module")
def cli_masks(data, cli_model, tmp_path_factory) -> dict[str, Path]:
    """The CLI's masks of both scenes with default settings (one thread)."""
    out = tmp_path_factory.mktemp("cli-masks")
    masks = {}
    for key in ("a", "b"):
        masks[key] = out / f"mask_{key}.tif"
        glnet("segment", str(data[key]), "-m", str(cli_model), "-o", str(masks[key]),
              "--threads", "1")
    return masks


@pytest.fixture(scope="module")
def qgis(tmp_path_factory) -> Qgis:
    """QGIS with the plugin from the repository and the engine in this virtual environment."""
    q = Qgis(tmp_path_factory.mktemp("qgis-home"), plugin_path=ROOT,
             env={"GLNET_PYTHON": ENGINE_PYTHON})
    q.enable()
    return q


# --------------------------------------------------------------------------- comparisons


def assert_same_raster(ours: Path, theirs: Path) -> None:
    with rasterio.open(ours) as a, rasterio.open(theirs) as b:
        assert a.profile == b.profile
        assert a.tags() == b.tags()
        assert np.array_equal(a.read(), b.read())
        if a.count == 1:
            assert a.colormap(1) == b.colormap(1)


def assert_same_model(ours: Path, theirs: Path) -> None:
    """Same metadata, same tensors. (Not the same bytes: safetensors writes its header's
    metadata keys in an order that changes from process to process.)"""
    assert read_metadata(ours) == read_metadata(theirs)
    a, b = load_file(ours), load_file(theirs)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def features(path: Path) -> list[tuple[dict, dict]]:
    with fiona.open(path) as src:
        return [(dict(f["properties"]), {"type": f["geometry"]["type"],
                                         "coordinates": f["geometry"]["coordinates"]})
                for f in src]


def log_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def assert_fails_with(proc: subprocess.CompletedProcess, message: str) -> None:
    output = log_of(proc)
    assert proc.returncode != 0, output
    assert message in output, output
    assert "Traceback" not in output
    assert '"results"' not in proc.stdout


# --------------------------------------------------------------------------- listing, help


def test_list_shows_the_algorithms(qgis):
    providers = qgis.json("list")["providers"]
    algs = providers["glnet"]["algorithms"]
    assert {k: v["name"] for k, v in algs.items()} == {
        **ALGORITHMS, EXAMPLE_MODEL: "Segment and vectorize land cover"}


def test_help_documents_every_parameter(qgis):
    proc = qgis.run("help", "glnet:segmentlandcover")
    assert proc.returncode == 0, log_of(proc)
    text = proc.stdout
    info = qgis.json("help", "glnet:segmentlandcover")
    params = info["parameters"]
    assert {"INPUT", "BANDS", "MODEL", "EXTENT", "AOI", "DEVICE", "WINDOW", "OVERLAP", "BATCH",
            "REFINE", "REFINE_THRESHOLD", "OUTPUT", "PROBABILITIES", "POLYGONS"} <= set(params)
    for name, param in params.items():
        assert f"{name}: {param['description']}" in text, name
    assert "Cloud Optimized GeoTIFF" in text  # the short help
    assert params["INPUT"]["type"]["id"] == "raster"
    assert params["BANDS"]["type"]["id"] == "string"
    assert "1,1,1" in params["BANDS"]["description"]
    assert params["EXTENT"]["type"]["id"] == "extent" and params["EXTENT"]["optional"]
    assert params["AOI"]["optional"] and params["DEVICE"]["raw_definition"]["options"] == [
        "cpu", "cuda"]
    assert params["OUTPUT"]["type"]["id"] == "rasterDestination"
    assert params["POLYGONS"]["type"]["id"] == "vectorDestination"
    assert params["MODEL"]["type"]["id"] == "file"
    advanced = {n for n, p in params.items() if p["is_advanced"]}
    assert {"WINDOW", "OVERLAP", "BATCH", "REFINE", "REFINE_THRESHOLD", "BLEND",
            "THREADS"} <= advanced
    assert not advanced & {"INPUT", "MODEL", "OUTPUT", "BANDS", "EXTENT", "AOI", "DEVICE"}
    assert info["algorithm_details"]["short_description"]

    # Every algorithm: a short description, a help text, every parameter described.
    proc = qgis.pyqgis(HELP_SCRIPT)
    assert proc.returncode == 0, log_of(proc)
    algs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(algs) == {*ALGORITHMS, EXAMPLE_MODEL}
    for alg, details in algs.items():
        assert details["short"] and len(details["help"]) > 200, alg
        assert details["group"] in ("Land cover", "Models", "Engine"), alg
        for name, description in details["parameters"].items():
            assert len(description) > 3, (alg, name)


HELP_SCRIPT = """
print(json.dumps({a.id(): {'short': a.shortDescription(), 'help': a.shortHelpString(),
                           'group': a.group(),
                           'parameters': {p.name(): p.description()
                                          for p in a.parameterDefinitions()}}
                  for a in registry.providerById('glnet').algorithms()}))
"""


# --------------------------------------------------------------------------- the algorithms


def test_train_matches_the_cli(qgis, data, cli_model, tmp_path):
    out = tmp_path / "tiny.glnet"
    proc = qgis.algorithm("glnet:train", f"INPUT={data['a']}", f"LABELS={data['a_labels']}",
                          f"CLASSES={data['classes']}", f"OUTPUT={out}", *TRAIN_QGIS)
    assert proc.returncode == 0, log_of(proc)
    run = json.loads(proc.stdout)
    # The CLI's model: the same metadata and the same weights (one thread, the same seed).
    assert_same_model(out, cli_model)
    meta = read_metadata(out)
    assert meta.class_names == list(CLASS_NAMES) and meta.stages
    assert meta.net.window_size == 128 and meta.net.patch_size == 64
    assert 0 <= run["results"]["BEST_MIOU"] <= 1
    info = "\n".join(run["log"]["info"])
    assert "stage 1 epoch 1" in info  # the engine's messages reach the log
    assert f"GLNet engine Python: {ENGINE_PYTHON}" in info


def test_segment_matches_the_cli(qgis, data, cli_model, tmp_path):
    x0, y1 = ORIGIN
    box = (x0 + 4.25, y1 - 80.5, x0 + 90.0, y1 - 3.0)  # xmin, ymin, xmax, ymax
    aoi = f"{data['vectors']}|layername=aoi"
    cli = tmp_path / "cli"
    cli.mkdir()
    glnet("segment", str(data["a"]), "-m", str(cli_model), "-o", str(cli / "mask.tif"),
          "--probabilities", str(cli / "prob.tif"), "--polygons", str(cli / "polygons.gpkg"),
          "--bands", "3,2,1",
          f"--extent={box[0]},{box[1]},{box[2]},{box[3]}", "--aoi", str(data["vectors"]),
          "--aoi-layer", "aoi", "--threads", "1", "--window", "96")
    out = tmp_path / "qgis"
    out.mkdir()
    # qgis_process takes an extent as xmin,xmax,ymin,ymax [CRS].
    results = qgis.results(
        "glnet:segmentlandcover", f"INPUT={data['a']}", f"MODEL={cli_model}",
        f"OUTPUT={out / 'mask.tif'}", f"PROBABILITIES={out / 'prob.tif'}",
        f"POLYGONS={out / 'polygons.gpkg'}", "BANDS=3",
        "BANDS=2", "BANDS=1", f"EXTENT={box[0]},{box[2]},{box[1]},{box[3]} [{CRS}]",
        f"AOI={aoi}", "THREADS=1", "WINDOW=96")
    assert results == {"OUTPUT": str(out / "mask.tif"), "PROBABILITIES": str(out / "prob.tif"),
                       "POLYGONS": str(out / "polygons.gpkg")}
    assert_same_raster(out / "mask.tif", cli / "mask.tif")
    assert_same_raster(out / "prob.tif", cli / "prob.tif")
    assert features(out / "polygons.gpkg") == features(cli / "polygons.gpkg")
    assert (out / "mask.qml").read_text() == (cli / "mask.qml").read_text()
    with rasterio.open(out / "mask.tif") as ds:
        mask = ds.read(1)
        assert ds.width < 192 and (mask == 255).any() and (mask < 3).any()


def test_vectorize_matches_the_cli(qgis, cli_masks, tmp_path):
    mask = cli_masks["a"]
    glnet("vectorize", str(mask), "-o", str(tmp_path / "cli.gpkg"), "--min-area", "20",
          "--simplify", "0.5", "--classes", "1,2")
    results = qgis.results("glnet:vectorize", f"INPUT={mask}", "MIN_AREA=20", "SIMPLIFY=0.5",
                           "CLASSES=1,2", f"OUTPUT={tmp_path / 'qgis.gpkg'}")
    assert results["OUTPUT"] == str(tmp_path / "qgis.gpkg")
    ours, theirs = features(tmp_path / "qgis.gpkg"), features(tmp_path / "cli.gpkg")
    assert ours == theirs and ours
    assert {p["class_id"] for p, _ in ours} <= {1, 2}
    assert set(ours[0][0]) == {"class_id", "class_name", "area_m2", "perimeter_m"}

    # A second run to the same destination replaces it, as QGIS users expect.
    qgis.results("glnet:vectorize", f"INPUT={mask}", f"OUTPUT={tmp_path / 'qgis.gpkg'}")
    assert features(tmp_path / "qgis.gpkg") != ours


def test_evaluate_matches_the_cli(qgis, data, cli_masks, tmp_path):
    mask = cli_masks["a"]
    cli = json.loads(glnet("evaluate", str(mask), str(data["a_labels"]), "--ignore-classes",
                           "0", "--json").stdout)
    report = tmp_path / "scores.json"
    results = qgis.results("glnet:evaluate", f"INPUT={mask}", f"REFERENCE={data['a_labels']}",
                           "IGNORE_CLASSES=0", f"OUTPUT_JSON={report}")
    assert json.loads(report.read_text()) == cli
    assert results["MIOU"] == pytest.approx(cli["miou"], abs=0, rel=1e-12)
    assert results["MEAN_F1"] == pytest.approx(cli["mean_f1"], rel=1e-12)
    assert results["OVERALL_ACCURACY"] == pytest.approx(cli["overall_accuracy"], rel=1e-12)
    assert results["PIXELS"] == cli["pixels"] > 0
    assert "water" not in results["CLASS_IOU"] and "forest: " in results["CLASS_IOU"]

    # Polygons with class names, from a named layer of a GeoPackage.
    cli = json.loads(glnet("evaluate", str(mask), str(data["reference"]), "--ref-field", "kind",
                           "--ref-layer", "reference", "--json").stdout)
    results = qgis.results("glnet:evaluate", f"INPUT={mask}",
                           f"REFERENCE={data['reference']}|layername=reference",
                           "REF_FIELD=kind")
    assert results["MIOU"] == pytest.approx(cli["miou"], rel=1e-12)
    assert results["PIXELS"] == cli["pixels"] > 0


def test_importofficial_passes_the_checkpoints_and_reports_engine_errors(qgis, tmp_path):
    g = tmp_path / "G.pth"
    g.write_text("not a checkpoint\n")
    proc = qgis.algorithm("glnet:importofficial", f"G={g}", f"G2L={g}",
                          f"OUTPUT={tmp_path / 'deepglobe.glnet'}")
    # The message `glnet import-official` prints after "error: ".
    from glnet.errors import GlnetError
    from glnet.nn.official import load_checkpoint

    with pytest.raises(GlnetError) as err:
        load_checkpoint(g)
    assert str(g) in str(err.value)
    assert_fails_with(proc, str(err.value))
    assert not list(tmp_path.glob("*.glnet"))


REFERENCE_DIR = ROOT.parent / "shared" / "glnet-reference"


@pytest.mark.skipif(not (REFERENCE_DIR / "official_state_dict.json").exists(),
                    reason="no official_state_dict.json to build released-style checkpoints")
def test_importofficial_converts_the_checkpoints(qgis, tmp_path):
    import torch

    from glnet.config import preset
    from glnet.nn.official import convert_state, deepglobe_meta

    params = json.loads((REFERENCE_DIR / "official_state_dict.json").read_text())["params"]
    # Released-style checkpoints (nn.DataParallel's "module." keys), filled cheaply.
    state = {"module." + p["key"]: torch.zeros(p["shape"], dtype=torch.int64)
             if p["key"].endswith("num_batches_tracked")
             else torch.full(p["shape"], 0.01 * (i % 7), dtype=torch.float32)
             for i, p in enumerate(params)}
    g = tmp_path / "G.pth"
    torch.save(state, g)
    out = tmp_path / "deepglobe.glnet"
    results = qgis.results("glnet:importofficial", f"G={g}", f"G2L={g}", f"OUTPUT={out}")
    assert results == {"OUTPUT": str(out)}
    # What `glnet import-official` writes (its own functions, in this process; running the
    # command as well would convert 317 MB once more for nothing).
    expected, stages = convert_state(state, state, None, source="test")
    meta = read_metadata(out)
    assert stages == (1, 2) and meta == deepglobe_meta(preset("official", num_classes=7), stages)
    weights = load_file(out)
    assert weights.keys() == expected.keys()
    assert all(np.array_equal(weights[k], expected[k].numpy()) for k in weights)


# --------------------------------------------------------------------------- batch and models

BATCH_SCRIPT = """
from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
from qgis.PyQt.QtWidgets import QFileDialog
batch_file = ARGS[0]
# The dialog's own "Open" button code reads the saved batch; only the file chooser is bypassed.
QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: (batch_file, 'JSON files (*.json)'))
dialog = BatchAlgorithmDialog(registry.algorithmById('glnet:segmentlandcover').create())
panel = dialog.mainWidget()
panel.load()
rows = panel.batchRowCount()
panel.checkLoadLayersOnCompletion.setChecked(True)
dialog.runAlgorithm()
layers = []
for layer in QgsProject.instance().mapLayers().values():
    renderer = layer.renderer()
    classes = ([[int(c.value), c.label, c.color.name()] for c in renderer.classes()]
               if renderer.type() == 'paletted' else None)
    layers.append({'source': layer.source(), 'renderer': renderer.type(), 'classes': classes,
                   'styled': layer.customProperty('glnet/styled_classes')})
print(json.dumps({'rows': rows, 'layers': layers}))
"""


def test_batch_dialog_segments_two_scenes(qgis, data, cli_model, cli_masks, tmp_path):
    rows = []
    for key in ("a", "b"):
        rows.append({"PARAMETERS": {"INPUT": repr(str(data[key])), "MODEL": repr(str(cli_model)),
                                    "THREADS": "1"},
                     "OUTPUTS": {"OUTPUT": str(tmp_path / f"batch_{key}.tif")}})
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(rows), encoding="utf-8")
    proc = qgis.pyqgis(BATCH_SCRIPT, str(batch), timeout=300)
    assert proc.returncode == 0, log_of(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2
    for key in ("a", "b"):
        assert_same_raster(tmp_path / f"batch_{key}.tif", cli_masks[key])
    # Loaded from the GUI: paletted, with the model's class names and colours.
    layers = {Path(layer["source"]).name: layer for layer in result["layers"]}
    assert set(layers) == {"batch_a.tif", "batch_b.tif"}
    palette = json.loads(data["classes"].read_text())
    expected = [[c["value"], c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"])]
                for c in palette]
    for layer in layers.values():
        assert layer["renderer"] == "paletted" and layer["styled"] == 3
        assert layer["classes"] == expected


def test_model_chains_segment_and_vectorize(qgis, data, cli_model, cli_masks, tmp_path):
    glnet("vectorize", str(cli_masks["a"]), "-o", str(tmp_path / "cli.gpkg"), "--min-area", "10")
    mask, polygons = tmp_path / "mask.tif", tmp_path / "polygons.gpkg"
    # The example model as the Toolbox has it (the provider loads the .model3 file).
    results = qgis.results(EXAMPLE_MODEL, f"scene={data['a']}", f"model={cli_model}",
                           "min_area=10", "threads=1", f"segment:mask={mask}",
                           f"vectorize:polygons={polygons}")
    assert results == {"segment:mask": str(mask), "vectorize:polygons": str(polygons)}
    assert_same_raster(mask, cli_masks["a"])
    assert features(polygons) == features(tmp_path / "cli.gpkg")


# --------------------------------------------------------------------------- cancel, errors

CANCEL_SCRIPT = """
from qgis.core import QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingFeedback
from qgis.PyQt.QtCore import QTimer
scene, model, output, batch_file = ARGS
alg = registry.algorithmById('glnet:segmentlandcover')
context = QgsProcessingContext()
context.setProject(QgsProject.instance())
feedback = QgsProcessingFeedback()
task = QgsProcessingAlgRunnerTask(alg, {'INPUT': scene, 'MODEL': model, 'OUTPUT': output,
                                        'THREADS': 1}, context, feedback)
state = {}
task.executed.connect(lambda ok, results: state.update(ok=ok, done=time.monotonic()))

def workers():
    pids = []
    for pid in os.listdir('/proc'):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                argv = f.read().split(b'\\0')
        except OSError:
            continue
        # This test's workers only: their outputs are in its folder (other tests may run).
        mine = any(a.startswith(os.path.dirname(output).encode()) for a in argv)
        if pid.isdigit() and b'glnet.cli' in argv and b'segment' in argv and mine:
            pids.append(int(pid))
    return pids

def check():
    # The GUI's Cancel button: on the main thread, once the worker is busy.
    if 'cancelled' not in state and feedback.progress() > 0:
        state['pids'] = workers()
        state['progress'] = feedback.progress()
        state['cancelled'] = time.monotonic()
        feedback.cancel()

timer = QTimer()
timer.timeout.connect(check)
timer.start(100)
QgsApplication.taskManager().addTask(task)
start = time.monotonic()
while 'done' not in state and time.monotonic() - start < 240:
    app.processEvents()
    time.sleep(0.02)
timer.stop()
alive = [p for p in state.get('pids', []) if os.path.exists(f'/proc/{p}')]
task_result = {'ok': state.get('ok'), 'pids': state.get('pids'), 'alive': alive,
               'stopped_after': state['done'] - state['cancelled'] if 'done' in state
               and 'cancelled' in state else None, 'log': feedback.textLog()}

# The batch dialog runs its rows on the main thread: its Cancel button still works.
from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
from qgis.PyQt.QtWidgets import QFileDialog
QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: (batch_file, 'JSON files (*.json)'))
dialog = BatchAlgorithmDialog(alg.create())
dialog.mainWidget().load()
batch = {}

def click():
    # Once the first row's worker is writing its temporary mask beside the output.
    busy = [n for n in os.listdir(os.path.dirname(output)) if n.startswith('.batch_1.tif.')]
    if 'cancelled' not in batch and busy:
        batch['pids'] = workers()
        batch['cancelled'] = time.monotonic()
        dialog.cancelButton().click()

timer = QTimer()
timer.timeout.connect(click)
timer.start(100)
dialog.runAlgorithm()
batch['stopped_after'] = time.monotonic() - batch['cancelled'] if 'cancelled' in batch else None
batch['alive'] = [p for p in batch.get('pids', []) if os.path.exists(f'/proc/{p}')]
print(json.dumps({'task': task_result, 'batch': batch}))
"""


def test_cancel_stops_the_worker_and_leaves_nothing(qgis, cli_model, tmp_path):
    scene, _ = write_scene(tmp_path, "big", 1024, 1024, seed=5)  # minutes of work
    out = tmp_path / "out"
    out.mkdir()
    # The same scene twice in a batch (saved where the outputs are not).
    rows = [{"PARAMETERS": {"INPUT": repr(str(scene)), "MODEL": repr(str(cli_model)),
                            "THREADS": "1"}, "OUTPUTS": {"OUTPUT": str(out / f"batch_{i}.tif")}}
            for i in (1, 2)]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(rows), encoding="utf-8")
    proc = qgis.pyqgis(CANCEL_SCRIPT, str(scene), str(cli_model), str(out / "mask.tif"),
                       str(batch), timeout=300)
    assert proc.returncode == 0, log_of(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # A run from the dialog (a background task): cancelled once the worker reported progress.
    task = result["task"]
    assert task["stopped_after"] is not None and task["ok"] is False, task
    assert len(task["pids"]) == 1 and task["alive"] == [], task
    assert task["stopped_after"] < 6, task
    assert "Cancelling" in task["log"], task["log"]
    # The batch dialog: Cancel stops the running row's worker, and the rows after it.
    batch = result["batch"]
    assert batch["stopped_after"] is not None and batch["stopped_after"] < 6, batch
    assert len(batch["pids"]) == 1 and batch["alive"] == [], batch
    assert list(out.iterdir()) == []  # no mask, no style, no temporary files


def test_bad_input_reaches_the_user_as_the_engine_says_it(qgis, data, cli_model, tmp_path):
    out = tmp_path / "mask.tif"
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={data['grey']}",
                          f"MODEL={cli_model}", f"OUTPUT={out}")
    assert_fails_with(proc, f"{data['grey']} has 1 band(s) but the model takes 3")
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={data['a']}",
                          f"MODEL={cli_model}", f"OUTPUT={out}", "BANDS=1", "BANDS=2")
    assert_fails_with(proc, '"Bands": the model takes 3 band(s) (band 1, band 2, band 3), 2 given (1,2)')
    assert list(tmp_path.iterdir()) == []


def test_missing_engine_says_what_to_install(qgis, data, cli_model, tmp_path):
    if not SYSTEM_PYTHON.is_file():
        pytest.skip(f"{SYSTEM_PYTHON} is missing")
    # GLNET_PYTHON set: only that Python is tried (QGIS's own has no glnet).
    proc = qgis.algorithm("glnet:segmentlandcover", f"INPUT={data['a']}", f"MODEL={cli_model}",
                          f"OUTPUT={tmp_path / 'mask.tif'}",
                          env={"GLNET_PYTHON": str(SYSTEM_PYTHON)})
    assert_fails_with(proc, "The GLNet engine was not found.")
    output = log_of(proc)
    assert f"the environment variable GLNET_PYTHON names {SYSTEM_PYTHON}" in output
    assert f"{SYSTEM_PYTHON} -m pip install '{ROOT}[pretrained]' torch==" in output
    assert "(glnet:setupengine;" in output
    assert "No module named 'glnet'" in output
    assert not (tmp_path / "mask.tif").exists()


# --------------------------------------------------------------------------- the plugin zip


@pytest.fixture(scope="module")
def zip_qgis(tmp_path_factory) -> Qgis:
    """The zip installed in a fresh profile; nothing points at the repository or the engine."""
    plugin_zip = build_plugin_zip(tmp_path_factory.mktemp("zip-build"))
    qgis = Qgis(tmp_path_factory.mktemp("zip-home"), plugin_path=None,
                env={"PATH": "/usr/bin:/bin"})
    install_zip(qgis, plugin_zip)
    qgis.enable()
    return qgis


def test_zip_plugin_without_an_engine_says_what_to_install(zip_qgis, data, tmp_path):
    algs = zip_qgis.json("list")["providers"]["glnet"]["algorithms"]
    assert set(algs) == {*ALGORITHMS, EXAMPLE_MODEL}
    proc = zip_qgis.algorithm("glnet:vectorize", f"INPUT={data['a_labels']}",
                              f"OUTPUT={tmp_path / 'polygons.gpkg'}")
    assert_fails_with(proc, "The GLNet engine was not found.")
    output = log_of(proc)
    assert "python3 -m venv $HOME/.local/share/glnet-qgis/venv" in output
    wheel = next((zip_qgis.plugins_dir / "glnet_qgis" / "wheels").glob("*.whl"))
    assert f"$HOME/.local/share/glnet-qgis/venv/bin/python -m pip install '{wheel}[pretrained]'" \
        in output
    assert '"Set up the GLNet engine" (glnet:setupengine;' in output
    assert "set GLNET_PYTHON" in output
    # What it tried: the user environment (no checkout beside the installed plugin).
    assert f"{zip_qgis.home}/.local/share/glnet-qgis/venv/bin/python (user environment: not found)" \
        in output


def test_zip_plugin_finds_the_engine_from_the_processing_setting(zip_qgis, data, cli_masks):
    cli = json.loads(glnet("evaluate", str(cli_masks["a"]), str(data["a_labels"]),
                           "--json").stdout)
    zip_qgis.set_setting("Processing", "Configuration\\GLNET_PYTHON", ENGINE_PYTHON)
    try:
        proc = zip_qgis.algorithm("glnet:evaluate", f"INPUT={cli_masks['a']}",
                                  f"REFERENCE={data['a_labels']}")
    finally:
        zip_qgis.set_setting("Processing", "Configuration\\GLNET_PYTHON", "")
    assert proc.returncode == 0, log_of(proc)
    run = json.loads(proc.stdout)
    assert f"GLNet engine Python: {ENGINE_PYTHON}" in run["log"]["info"]
    assert run["results"]["MIOU"] == pytest.approx(cli["miou"], rel=1e-12)


def test_user_venv_is_found_without_any_setting(zip_qgis, data, cli_masks, tmp_path):
    venv = zip_qgis.home / ".local" / "share" / "glnet-qgis" / "venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    link = venv / "python"
    link.write_text(f'#!/bin/sh\nexec "{ENGINE_PYTHON}" "$@"\n')
    link.chmod(0o755)
    try:
        proc = zip_qgis.algorithm("glnet:vectorize", f"INPUT={cli_masks['a']}",
                                  f"OUTPUT={tmp_path / 'polygons.gpkg'}")
    finally:
        link.unlink()
    assert proc.returncode == 0, log_of(proc)
    assert f"GLNet engine Python: {link}" in proc.stdout
    assert os.path.getsize(tmp_path / "polygons.gpkg") > 0
