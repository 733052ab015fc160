"""Progress of long runs: the engine calls a function, the front end decides how to show it.

Engine functions take ``progress(fraction, message=None)`` with ``fraction``
in [0, 1] (``contract.ProgressFn``). The CLI renders it as a progress bar on a
terminal, as JSON lines on stderr for a controlling process (``glnet
--progress json``, used by the QGIS plugin's worker; the lines are
``contract.progress_line`` and ``contract.message_line``), or not at all.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .contract import ProgressFn, message_line, progress_line

# The choices of ``glnet --progress``.
KINDS = ("auto", "bar", "json", "none")


def silent(fraction: float, message: str | None = None) -> None:
    """A progress function that shows nothing."""


class JsonLines:
    """``{"progress": 0.42}`` and ``{"message": "..."}`` lines, one event per line (``contract``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.last = -1.0

    def __call__(self, fraction: float, message: str | None = None) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        if message:
            self._emit(message_line(message))
        if fraction - self.last >= 0.001 or fraction == 1.0:
            self.last = fraction
            self._emit(progress_line(fraction))

    def _emit(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


class Bar:
    """A tqdm bar in percent; messages are written above it."""

    def __init__(self, desc: str = "") -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self.done = 0

    def __call__(self, fraction: float, message: str | None = None) -> None:
        if message:
            self.bar.write(message)
        target = int(min(max(fraction, 0.0), 1.0) * 100)
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target

    def close(self) -> None:
        self.bar.close()


def make(kind: str, desc: str = "") -> ProgressFn:
    """The progress function for ``kind`` (``auto``: a bar on a terminal, else nothing)."""
    if kind == "auto":
        kind = "bar" if sys.stderr.isatty() else "none"
    if kind == "json":
        return JsonLines()
    if kind == "bar":
        return Bar(desc)
    return silent
