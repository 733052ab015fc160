"""The QGIS plugin in the real QGIS, through ``qgis_process`` (no mocks).

Every QGIS run uses a throwaway profile: HOME and the XDG folders point into a
pytest temporary folder, so ``qgis_process plugins enable`` writes its
settings there and never into the real user's profile. Two layouts are tested:

* development: QGIS_PLUGINPATH is the repository root, the plugin reaches its
  metadata and icon through symlinks and the engine through ``../core``;
* release: the zip of ``make plugin``, unpacked as QGIS's "Install from ZIP"
  does into the profile's plugin folder, with nothing pointing at the
  repository, so the engine can only be the copy inside the zip.

Without /usr/bin/qgis_process.bin these tests are skipped, except under CI
(CI=true), where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from qgis_support import (
    PLUGIN,
    ROOT,
    SYSTEM_PYTHON,
    TIMEOUT,
    Qgis,
    build_plugin_zip,
    install_zip,
    require_qgis,
)
from qgis_support import metadata as _metadata

ALG = "glnet:modelinfo"
ALGORITHMS = ("glnet:segmentlandcover", "glnet:train", "glnet:vectorize", "glnet:evaluate",
              "glnet:importofficial", "glnet:modelinfo", "glnet:quantize", "glnet:setupengine",
              "glnet:Segment and vectorize land cover")  # the example model
CLASSES = (("water", (31, 120, 180)), ("forest <wet> & dry", (51, 160, 44)),
           ("built-up", (227, 26, 28)))

pytestmark = pytest.mark.qgis


def modelinfo(qgis: Qgis, model: Path, *extra: str) -> subprocess.CompletedProcess:
    return qgis.algorithm(ALG, f"MODEL={model}", *extra)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A real model file written by the engine (3 classes, 4 bands, stages 1 and 2)."""
    from glnet.config import preset
    from glnet.modelfile import ClassInfo, default_meta, save_model
    from glnet.nn.glnet import GLNet

    net = preset("fast", num_classes=3, in_channels=4)
    classes = tuple(ClassInfo(i, name, color) for i, (name, color) in enumerate(CLASSES))
    meta = default_meta(net, classes=classes, stages=(1, 2),
                        bands=("red", "green", "blue", "nir"))
    return save_model(GLNet(net), meta, tmp_path_factory.mktemp("model") / "landcover.glnet")


@pytest.fixture(scope="module")
def dev_qgis(tmp_path_factory) -> Qgis:
    """QGIS finding the plugin in the repository (QGIS_PLUGINPATH = repository root)."""
    return Qgis(tmp_path_factory.mktemp("dev-home"), plugin_path=ROOT)


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    """The zip of ``make plugin``, built into a temporary folder."""
    return build_plugin_zip(tmp_path_factory.mktemp("plugin-build"))


@pytest.fixture(scope="module")
def zip_qgis(tmp_path_factory, plugin_zip) -> Qgis:
    """QGIS with the zip installed into its profile and no way to reach the repository."""
    qgis = Qgis(tmp_path_factory.mktemp("zip-home"), plugin_path=None)
    install_zip(qgis, plugin_zip)
    return qgis


def _engine_dir(proc: subprocess.CompletedProcess) -> Path:
    log = json.loads(proc.stdout)["log"]["info"]
    lines = [line for line in log if line.startswith("glnet engine: ")]
    assert lines, log
    return Path(lines[0].removeprefix("glnet engine: ")).resolve()


def assert_model_results(proc: subprocess.CompletedProcess, model: Path) -> dict:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    results = out["results"]
    assert out["inputs"]["MODEL"] == str(model)
    assert [c.strip() for c in results["CLASSES"].split(",")] == [n for n, _ in CLASSES]
    assert results["NUM_CLASSES"] == 3
    assert results["BANDS"] == "red, green, blue, nir"
    assert results["PRESET"] == "fast"
    assert results["STAGES"] == "1, 2"
    # The fast preset's window geometry, as save_model recorded it.
    assert results["WINDOW_SIZE"] == 1880
    assert results["PATCH_SIZE"] == 512
    assert results["GLOBAL_SIZE"] == 512
    return out


def test_metadata_is_complete_and_reached_through_symlinks():
    meta = _metadata(ROOT / "metadata.txt")
    for key in ("name", "qgisminimumversion", "description", "about", "version", "author",
                "email", "repository", "tracker", "icon", "hasprocessingprovider"):
        assert meta.get(key), key
    assert meta["hasprocessingprovider"] == "yes"
    link = ROOT / PLUGIN / "metadata.txt"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.read_text(encoding="utf-8") == (ROOT / "metadata.txt").read_text(encoding="utf-8")
    icon = ROOT / PLUGIN / meta["icon"]
    assert icon.is_file() and icon.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_enable_and_list(dev_qgis):
    proc = dev_qgis.enable()
    # The name comes from metadata.txt, which QGIS read through the symlink.
    assert "Enabled glnet_qgis (GLNet land cover)" in proc.stdout, proc.stdout + proc.stderr
    ini = dev_qgis.profile / "QGIS" / "QGIS3.ini"
    assert "glnet_qgis=true" in ini.read_text(encoding="utf-8")

    plugins = dev_qgis.json("plugins")["plugins"]
    assert plugins[PLUGIN]["loaded"] is True, plugins

    providers = dev_qgis.json("list")["providers"]
    assert "glnet" in providers, sorted(providers)
    glnet = providers["glnet"]
    assert glnet["name"] == "GLNet"
    assert glnet["is_active"] is True
    assert set(glnet["algorithms"]) == set(ALGORITHMS), sorted(glnet["algorithms"])
    assert glnet["algorithms"][ALG]["name"] == "Model information"
    assert glnet["version"] == _metadata(ROOT / "metadata.txt")["version"]


def test_help_documents_model_parameter(dev_qgis):
    dev_qgis.enable()
    proc = dev_qgis.run("help", ALG)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MODEL: Model file" in proc.stdout
    assert "GLNet model file" in proc.stdout  # the short help text

    info = dev_qgis.json("help", ALG)
    model = info["parameters"]["MODEL"]
    assert model["type"]["id"] == "file"
    assert model["optional"] is False
    assert "*.glnet" in model["raw_definition"]["filefilter"]
    assert info["parameters"]["OUTPUT_HTML"]["optional"] is True
    assert {"CLASSES", "NUM_CLASSES", "PRESET", "STAGES", "WINDOW_SIZE", "PATCH_SIZE",
            "GLOBAL_SIZE"} <= set(info["outputs"])


def test_modelinfo_reads_the_model(dev_qgis, model_file, tmp_path):
    report = tmp_path / "model report.html"
    proc = modelinfo(dev_qgis, model_file, f"OUTPUT_HTML={report}")
    out = assert_model_results(proc, model_file)
    assert out["results"]["OUTPUT_HTML"] == str(report)
    # Development layout: the engine is the repository's core/.
    assert _engine_dir(proc) == (ROOT / "core").resolve()

    page = report.read_text(encoding="utf-8")
    assert "forest &lt;wet&gt; &amp; dry" in page  # names from the file are escaped
    assert "<wet>" not in page
    for _, (r, g, b) in CLASSES:
        assert f'bgcolor="#{r:02x}{g:02x}{b:02x}"' in page


@pytest.mark.parametrize("kind,said", [
    ("text", "not a GLNet model file"), ("pickle", "not a GLNet model file"),
    ("deep", "not JSON"), ("truncated", "truncated"), ("corrupted", "checksum")])
def test_modelinfo_refuses_other_files(dev_qgis, model_file, tmp_path, kind, said):
    path = tmp_path / "model.glnet"
    if kind == "text":
        path.write_text("These are notes about a model, not a model.\n", encoding="utf-8")
    elif kind == "pickle":
        path = tmp_path / "weights.pth"
        path.write_bytes(pickle.dumps({"conv1.weight": [0.5] * 64}, protocol=4))
    elif kind == "deep":  # a 100k-deep JSON header (a RecursionError for a naive reader)
        text = b"[" * 100_000 + b"]" * 100_000
        path.write_bytes(len(text).to_bytes(8, "little") + text)
    else:  # read in QGIS's own process: the tensor data is checked as `glnet info` checks it
        blob = bytearray(model_file.read_bytes())
        if kind == "truncated":
            del blob[-1000:]
        else:
            blob[-5000] ^= 0xFF
        path.write_bytes(bytes(blob))
    proc = modelinfo(dev_qgis, path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert any(line.startswith(f"{path}: ") and said in line for line in output.splitlines()), \
        output
    assert "Traceback" not in output
    assert "results" not in proc.stdout


def test_zip_holds_real_files_and_the_engine(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        infos = zf.infolist()
        names = {i.filename for i in infos}
        for info in infos:
            assert info.filename.startswith(f"{PLUGIN}/"), info.filename
            assert (info.external_attr >> 16) & 0o170000 != 0o120000, f"symlink {info.filename}"
            assert "__pycache__" not in info.filename
        meta = zf.read(f"{PLUGIN}/metadata.txt").decode("utf-8")
        icon = zf.read(f"{PLUGIN}/icon.svg").decode("utf-8")
    assert meta == (ROOT / "metadata.txt").read_text(encoding="utf-8")
    assert "<svg" in icon
    for name in ("__init__.py", "provider.py", "modelinfo.py", "engine_loader.py", "worker.py",
                 "discovery.py", "process.py", "lines.py", "cleanup.py",
                 "algorithm.py", "styles.py", "segment.py", "train.py", "vectorize.py",
                 "evaluate.py", "importofficial.py", "quantize.py", "setupengine.py",
                 "engine_setup.py",
                 "torch-pins.txt", "LICENSE"):
        assert f"{PLUGIN}/{name}" in names
    for source in (ROOT / "core").glob("*.py"):
        assert f"{PLUGIN}/engine/{source.name}" in names
    assert f"{PLUGIN}/models/segment_and_vectorize.model3" in names
    # The engine as a wheel, for "Set up the GLNet engine", with the LICENSE inside it too.
    version = _metadata(ROOT / "metadata.txt")["version"]
    wheel = f"{PLUGIN}/wheels/glnet_qgis-{version}-py3-none-any.whl"
    assert wheel in names
    with zipfile.ZipFile(plugin_zip) as zf, zf.open(wheel) as f, zipfile.ZipFile(f) as whl:
        wheel_names = set(whl.namelist())
    assert {f"glnet/{source.name}" for source in (ROOT / "core").glob("*.py")} <= wheel_names
    assert f"glnet_qgis-{version}.dist-info/licenses/LICENSE" in wheel_names


def test_zip_engine_imports_without_torch(zip_qgis, model_file):
    plugin_dir = zip_qgis.plugins_dir / PLUGIN
    probe = (
        "import importlib.util, json, sys\n"
        "blocked = tuple(sys.argv[3:])\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.split('.')[0]\n"
        "        if name in blocked or top != 'glnet' and top in blocked:\n"
        "            raise ModuleNotFoundError(f'blocked: {name}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "spec = importlib.util.spec_from_file_location('loader', sys.argv[1] + '/engine_loader.py')\n"
        "loader = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(loader)\n"
        "glnet = loader.import_engine()\n"
        "meta = glnet.modelfile.read_metadata(sys.argv[2])\n"
        "heavy = [m for m in ('torch', 'torchvision', 'numpy', 'rasterio', 'safetensors')\n"
        "         if m in sys.modules]\n"
        "print(json.dumps({'engine': glnet.__file__, 'classes': meta.class_names,\n"
        "                  'heavy': heavy}))\n"
    )
    env = zip_qgis.env
    runs = []
    if SYSTEM_PYTHON.is_file():
        # QGIS's own interpreter: glnet is not installed there at all.
        runs.append([str(SYSTEM_PYTHON), "-c", probe, str(plugin_dir), str(model_file)])
    # This venv has torch and an installed glnet: hide glnet so that the zip's
    # copy is used, and make any import of torch or numpy an error.
    runs.append([sys.executable, "-c", probe, str(plugin_dir), str(model_file),
                 "glnet", "torch", "torchvision", "numpy", "rasterio"])
    for cmd in runs:
        proc = subprocess.run(cmd, env=env, cwd=zip_qgis.home, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        assert Path(result["engine"]).resolve() == (plugin_dir / "engine" / "__init__.py").resolve()
        assert result["classes"] == [n for n, _ in CLASSES]
        assert result["heavy"] == []


def test_zip_installed_plugin_works_without_the_repository(zip_qgis, model_file):
    require_qgis()
    assert "QGIS_PLUGINPATH" not in zip_qgis.env
    # QGIS's Python cannot import the engine from anywhere but the zip's copy.
    if SYSTEM_PYTHON.is_file():
        proc = subprocess.run([str(SYSTEM_PYTHON), "-c", "import glnet"], env=zip_qgis.env,
                              cwd=zip_qgis.home, capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode != 0 and "No module named 'glnet'" in proc.stderr, proc.stderr

    proc = zip_qgis.enable()
    assert "Enabled glnet_qgis (GLNet land cover)" in proc.stdout, proc.stdout + proc.stderr
    providers = zip_qgis.json("list")["providers"]
    assert set(providers["glnet"]["algorithms"]) == set(ALGORITHMS), providers["glnet"]

    proc = modelinfo(zip_qgis, model_file)
    out = assert_model_results(proc, model_file)
    assert "OUTPUT_HTML" not in out["results"]  # the report is optional and off by default
    assert _engine_dir(proc) == (zip_qgis.plugins_dir / PLUGIN / "engine").resolve()
