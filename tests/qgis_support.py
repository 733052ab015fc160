"""Running the real QGIS in tests: ``qgis_process`` and PyQGIS scripts in a throwaway profile.

Every QGIS run uses a profile of its own: HOME and the XDG folders point into a
pytest temporary folder, so ``qgis_process plugins enable`` and the settings
a test writes land there and never in the real user's profile. Without
/usr/bin/qgis_process.bin the tests that need QGIS are skipped, except under CI
(CI=true), where they fail: CI must run them.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
SYSTEM_PYTHON = Path("/usr/bin/python3")
QGIS_UNZIP = Path("/usr/share/qgis/python/pyplugin_installer/unzip.py")
QGIS_PLUGINS = Path("/usr/share/qgis/python/plugins")
PLUGIN = "glnet_qgis"
TIMEOUT = 120


def require_qgis() -> None:
    """Skip without QGIS; under CI, fail instead: the QGIS tests must run there."""
    if QGIS_PROCESS.is_file() and os.access(QGIS_PROCESS, os.X_OK):
        return
    message = (f"{QGIS_PROCESS} is missing: install Debian's qgis and python3-qgis "
               "(`make qgis` does it as root)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {message}", pytrace=False)
    pytest.skip(message)


def isolated_env(home: Path, plugin_path: Path | None) -> dict[str, str]:
    """The environment of a QGIS run whose profile and settings live under ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QGIS_", "PYTHON", "XDG_", "GLNET_")) and k != "VIRTUAL_ENV"}
    # QGIS's embedded Python takes its prefix from the first python3 on PATH: an activated
    # virtual environment would hand it a standard library without Debian's qgis module.
    venv_bin = os.path.join(os.environ.get("VIRTUAL_ENV", sys.prefix), "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if os.path.normpath(p) != os.path.normpath(venv_bin))
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_RUNTIME_DIR=str(runtime),
        QT_QPA_PLATFORM="offscreen",
        PYTHONDONTWRITEBYTECODE="1",
    )
    if plugin_path is not None:
        env["QGIS_PLUGINPATH"] = str(plugin_path)
    return env


def engine_python(folder: Path) -> str:
    """This Python, importing the engine this test process imports (for GLNET_PYTHON).

    The worker drops PYTHONPATH (it belongs to QGIS's Python); when the tests
    run with one (an engine from another checkout), a wrapper passes it on.
    """
    path = os.environ.get("PYTHONPATH")
    if not path:
        return sys.executable
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{path}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def metadata(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    return dict(parser["general"])


class Qgis:
    """``qgis_process`` (and PyQGIS scripts) in a profile of its own."""

    def __init__(self, home: Path, plugin_path: Path | None, env: dict[str, str] | None = None):
        self.home = home
        self.plugin_path = plugin_path
        self.env = isolated_env(home, plugin_path)
        self.env.update(env or {})
        self.profile = home / ".local" / "share" / "QGIS" / "QGIS3" / "profiles" / "default"
        self.plugins_dir = self.profile / "python" / "plugins"
        self._enabled: subprocess.CompletedProcess | None = None

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        require_qgis()
        return subprocess.run([str(QGIS_PROCESS), *args], env={**self.env, **(env or {})},
                              cwd=cwd or self.home, capture_output=True, text=True,
                              timeout=timeout)

    def json(self, *args: str) -> dict:
        proc = self.run("--json", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    def enable(self) -> subprocess.CompletedProcess:
        """``plugins enable glnet_qgis`` once per profile."""
        if self._enabled is None:
            proc = self.run("plugins", "enable", PLUGIN)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            self._enabled = proc
        return self._enabled

    def algorithm(self, alg: str, *params: str, env: dict[str, str] | None = None,
                  cwd: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        """``qgis_process run ALG --json -- PARAMS...``."""
        self.enable()
        return self.run("run", alg, "--json", "--", *params, env=env, cwd=cwd, timeout=timeout)

    def results(self, alg: str, *params: str, **kwargs) -> dict:
        """The results of a successful run."""
        proc = self.algorithm(alg, *params, **kwargs)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(proc.stdout)["results"]

    def set_setting(self, section: str, key: str, value: str) -> None:
        """Write a setting into the profile's QGIS3.ini (before QGIS starts)."""
        ini = self.profile / "QGIS" / "QGIS3.ini"
        ini.parent.mkdir(parents=True, exist_ok=True)
        parser = configparser.RawConfigParser(delimiters=("=",), strict=False,
                                              interpolation=None)
        parser.optionxform = str
        if ini.exists():
            parser.read(ini, encoding="utf-8")
        if not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, key, value)
        with open(ini, "w", encoding="utf-8") as f:
            parser.write(f, space_around_delimiters=False)

    def pyqgis(self, script: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        """Run a PyQGIS script with QGIS's Python; ``PYQGIS_PRELUDE`` starts QGIS and the plugin."""
        require_qgis()
        if not SYSTEM_PYTHON.is_file():
            pytest.skip(f"{SYSTEM_PYTHON} is missing")
        plugin_parent = self.plugin_path or self.plugins_dir
        return subprocess.run(
            [str(SYSTEM_PYTHON), "-c", PYQGIS_PRELUDE + script, str(plugin_parent), *args],
            env={**self.env, **(env or {})}, cwd=self.home, capture_output=True, text=True,
            timeout=timeout)


# A PyQGIS script's start: QGIS with its GUI classes (offscreen), Processing,
# and the plugin loaded the way QGIS loads it (qgis.utils). sys.argv[1] is the
# folder holding glnet_qgis/; the script's own arguments follow.
PYQGIS_PRELUDE = """
import json, os, sys, time
sys.path.insert(0, '/usr/share/qgis/python/plugins')
sys.path.insert(0, sys.argv[1])
from qgis.core import QgsApplication, QgsProject
QgsApplication.setPrefixPath('/usr', True)
app = QgsApplication([], True)
app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
import qgis.utils
assert qgis.utils.loadPlugin('glnet_qgis'), 'loadPlugin failed'
assert qgis.utils.startProcessingPlugin('glnet_qgis'), 'startProcessingPlugin failed'
registry = QgsApplication.processingRegistry()
ARGS = sys.argv[2:]
"""


def build_plugin_zip(out: Path) -> Path:
    """``make plugin`` into ``out``, the engine wheel built by this Python; returns the zip."""
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "plugin",
         f"DIST={out / 'dist'}", f"PLUGIN_BUILD={out / 'build'}",
         f"PLUGIN_PYTHON={sys.executable}"],
        capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = metadata(ROOT / "metadata.txt")["version"]
    path = out / "dist" / f"{PLUGIN}-{version}.zip"
    assert path.is_file(), proc.stdout
    return path


def install_zip(qgis: Qgis, plugin_zip: Path) -> None:
    """What the plugin installer does: unpack the folder holding the shortest-named metadata.txt."""
    with zipfile.ZipFile(plugin_zip) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith("metadata.txt"))
    assert names and os.path.split(names[0])[0] == PLUGIN, names
    qgis.plugins_dir.mkdir(parents=True, exist_ok=True)
    if QGIS_UNZIP.is_file():
        spec = importlib.util.spec_from_file_location("qgis_plugin_unzip", QGIS_UNZIP)
        unzip = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(unzip)
        unzip.unzip(str(plugin_zip), str(qgis.plugins_dir))
    else:
        with zipfile.ZipFile(plugin_zip) as zf:
            zf.extractall(qgis.plugins_dir)


def checkout_qgis(tmp_path_factory) -> Qgis:
    """QGIS with this repository's plugin, enabled, running the engine this test process imports."""
    home = tmp_path_factory.mktemp("qgis-home")
    q = Qgis(home, plugin_path=ROOT,
             env={"GLNET_PYTHON": engine_python(tmp_path_factory.mktemp("engine"))})
    q.enable()
    return q
