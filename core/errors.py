"""Errors the engine reports to people rather than to programmers."""

from __future__ import annotations


class GlnetError(Exception):
    """A problem the user can fix: bad input, a bad model file, a bad option.

    The CLI prints it as one line on stderr and exits with code 1; the QGIS
    provider turns it into a ``QgsProcessingException`` with the same text.
    """


class ModelFileError(GlnetError):
    """A model file that is missing, corrupt, crafted or of an unknown format."""


class Cancelled(GlnetError):
    """The user cancelled a run; nothing was left at the destination."""


class OptionError(GlnetError, ValueError):
    """A setting outside the values it may take; the message names the setting.

    Also a ``ValueError``, so code that validates settings the Python way keeps
    working, while the CLI and QGIS show it as one line like any ``GlnetError``.
    ``option``, when given, is the field of the options dataclass that the
    message begins with, so that a front end can name it its own way (the CLI
    says ``--stages``).
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option
