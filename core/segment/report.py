"""A run's progress as its phases report it: fractions in 0..1, cancellation checked at each.

``Report(progress, cancel)`` wraps the caller's ``progress(fraction, message)``
(``contract.ProgressFn``) and ``cancel()``: every report first asks ``cancel``
and raises ``Cancelled`` if it says so, fractions are clamped to 0..1, and a
phase's message is passed on only once, however often it is repeated.
"""

from __future__ import annotations

from collections.abc import Callable

from ..contract import ProgressFn
from ..errors import Cancelled

CancelFn = Callable[[], bool]


class Report:
    """Maps phase progress onto 0..1 and checks for cancellation."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelFn | None) -> None:
        self._progress = progress
        self._cancel = cancel
        self._last: str | None = None

    def check(self) -> None:
        if self._cancel is not None and self._cancel():
            raise Cancelled("cancelled; nothing was written")

    def __call__(self, fraction: float, message: str | None = None) -> None:
        """Report progress; ``message`` names a new phase (passed on once)."""
        self.check()
        if self._progress is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            if message is not None and message != self._last:
                self._last = message
                self._progress(fraction, message)
            else:
                self._progress(fraction)
