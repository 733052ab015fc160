"""Running the GLNet engine's CLI in a worker process, for a Processing algorithm.

Every algorithm that runs the network runs ``python -m glnet.cli --progress
json COMMAND ...`` in the Python that holds the engine (``discovery``) and
follows it (``process.follow``): its lines drive the feedback (``lines``), a
failure becomes an EngineError with the engine's one-line message, and
cancelling sends SIGTERM; the engine unwinds, removes its temporary files and
exits with 130. A worker still alive after ``process.TERMINATE_GRACE`` seconds
is killed, and the temporary files it left beside the outputs removed
(``cleanup``).

Standard library only besides ``glnet.contract``, so it can be tested without QGIS.
"""

from __future__ import annotations

import shlex

from .cleanup import remove_partial_outputs
from .discovery import find_python
from .lines import FeedbackLog, Result, engine_contract, error_message, stderr_line
from .process import follow


class EngineError(Exception):
    """The engine failed; the message is its one-line error."""


class EngineCancelled(Exception):
    """The run was cancelled and the worker stopped."""


def command_line(python: str, command: str, args: list[str]) -> list[str]:
    return [python, "-m", "glnet.cli", "--progress", "json", command, *[str(a) for a in args]]


def run_engine(command: str, args: list[str], feedback=None, outputs=(), python: str | None = None,
               echo_stdout: bool = True) -> Result:
    """Run ``glnet COMMAND ARGS`` in the worker and follow it.

    Progress and messages go to ``feedback`` (a QgsProcessingFeedback or None);
    ``feedback.isCanceled()`` is checked every ``process.POLL_SECONDS``. Raises
    ``discovery.EngineNotFound``, EngineError (the engine's one-line message) or
    EngineCancelled. ``outputs`` are the paths the command writes: after a
    worker had to be killed, its temporary files beside them are removed.
    """
    log = FeedbackLog(feedback)
    python = python or find_python()
    argv = command_line(python, command, args)
    log.command(shlex.join(argv))
    stdout_lines: list[str] = []
    stderr_lines: list[str] = []

    contract = engine_contract()

    def on_stdout(line: str) -> None:
        stdout_lines.append(line)
        # The result object is for the algorithm; the line before it says the same to people.
        if echo_stdout and line.strip() and contract.parse_result(line) is None:
            log.info(line)

    try:
        code, cancelled, killed = follow(
            argv, log, on_stdout, lambda line: stderr_line(log, line, stderr_lines),
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
