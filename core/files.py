"""Output files: checked before work starts, written under a temporary name, renamed at the end.

Nothing the user already had is overwritten unless asked, and a failed or
cancelled run leaves nothing at the destination.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import GlnetError


def check_output_path(path: str | Path, overwrite: bool = False,
                      inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse an output path that would lose data or cannot be written.

    Raises ``GlnetError`` if the folder does not exist or is not writable, if
    ``path`` is one of ``inputs``, or if it exists and ``overwrite`` is false.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GlnetError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GlnetError(f"{path}: output folder {folder} is not writable")
    for item in inputs:
        if item is not None and Path(item).exists() and path.exists() and path.samefile(item):
            raise GlnetError(f"{path}: output would overwrite an input file")
    if path.is_dir():
        raise GlnetError(f"{path}: is a folder; give a file name for the output")
    if path.exists() and not overwrite:
        raise GlnetError(f"{path}: already exists (use --overwrite to replace it)")
    return path


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    On any exception (cancellation included) the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file private (0600); give it the permissions any
        # new file of the user's would have.
        if tmp_path.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
