"""Starting a worker process and following it to its end.

The worker runs in QGIS's environment less what belongs to QGIS's own Python,
GDAL and PROJ (``worker_env``), in a process group of its own so that
cancelling reaches its children too. ``follow`` hands each stdout and stderr
line to a callback as it comes and turns a cancel into SIGTERM, then, after
TERMINATE_GRACE seconds, SIGKILL. Standard library only (Qt is imported
lazily, to keep QGIS's window alive while waiting).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

TERMINATE_GRACE = 5.0
POLL_SECONDS = 0.1

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


def popen_flags() -> dict:
    if os.name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    # A process group of its own: cancelling reaches the children too (pip's
    # build processes, Dask's workers), not only the process we started.
    return {"start_new_session": True}


def _pump(stream, tag: str, sink: queue.Queue) -> None:
    try:
        for line in iter(stream.readline, ""):
            sink.put((tag, line.rstrip("\r\n")))
    except (OSError, ValueError):
        pass
    finally:
        sink.put((tag, None))


def follow(argv: list[str], log, on_stdout, on_stderr, what: str) -> tuple[int, bool, bool]:
    """Run ``argv`` to its end, handing each stdout and stderr line to its callback as it comes.

    ``log`` is a ``lines.FeedbackLog`` (anything with ``cancelled()`` and
    ``info(text)``); ``log.cancelled()`` is checked every POLL_SECONDS: a cancel logs "Cancelling:
    stopping WHAT" and sends SIGTERM; a process still alive TERMINATE_GRACE
    seconds later is killed. Returns ``(returncode, cancelled, killed)``; raises
    OSError when ``argv`` cannot start.
    """
    pump_events = _main_thread_events()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=worker_env(), text=True, encoding="utf-8", errors="replace", bufsize=1,
        **popen_flags())
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

