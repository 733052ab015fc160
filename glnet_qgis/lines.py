"""The GLNet engine's output lines, read for Processing.

What the engine prints is defined once, in ``glnet.contract`` (a module of the
standard library only, which the plugin imports through ``engine_loader``):

* stderr carries JSON event lines, ``{"progress": 0.42}`` (a fraction) and
  ``{"message": "..."}``, which drive ``feedback.setProgress`` and the log;
  any other stderr line is logged as console output (a warning when it says
  so; GDAL's own error lines not at all);
* a failed run ends with ``glnet COMMAND: error: <one line>`` on stderr and
  exit code 1 (2 for usage errors): that line becomes the error message
  (``error_message``);
* train, segment and evaluate end their stdout with their result, one JSON
  object line (``Result.result``).

The engine's hints name its command-line options; ``dialog_terms`` turns them
into the dialog's parameters.
"""

from __future__ import annotations

import re
import signal


def engine_contract():
    """``glnet.contract``: the engine's line formats and temporary names."""
    from .engine_loader import import_engine

    return import_engine().contract


class FeedbackLog:
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
    (r"--backend openvino\b", '"Runtime" OpenVINO'),
    (r"--backend torch\b", '"Runtime" PyTorch'),
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


def stderr_line(log: FeedbackLog, line: str, errors: list[str]) -> None:
    """Log one stderr line of the engine; lines that are not events are kept in ``errors``."""
    text = dialog_terms(line.strip())
    if not text:
        return
    contract = engine_contract()
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
    contract = engine_contract()
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
        return engine_contract().parse_result(lines[-1]) if lines else None
