"""Output files: checked before work starts, written under a temporary name, renamed at the end.

Nothing the user already had is overwritten unless asked, not even a file that
appeared while a run was working, and a failed or cancelled run leaves nothing
at the destination.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .contract import new_temp, temp_pattern
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
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` if the block succeeds.

    Without ``overwrite`` the move refuses, with a ``GlnetError``, a ``path``
    that appeared while the block ran (another run writing the same output):
    the check before work starts cannot see that. On any exception
    (cancellation included) the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    tmp_path = new_temp(path, ".part")
    try:
        yield tmp_path
        if tmp_path.exists():
            default_permissions(tmp_path)
        _publish(tmp_path, path, overwrite)
    except BaseException as exc:
        full = _disk_full(exc, path)  # asked before the temporary's space is freed
        tmp_path.unlink(missing_ok=True)
        if full:
            raise GlnetError(f"{path}: no space left on device") from None
        raise


def default_permissions(path: str | Path) -> None:
    """Give a temporary file the permissions any new file of the user's would get (umask).

    ``new_temp`` creates it private (0600), as ``mkstemp`` does.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# -- temporary names -----------------------------------------------------------------------
#
# Named by ``contract.new_temp`` (the plugin recognises them too): every temporary
# file or folder of an output OUT is hidden beside it, ``.OUT.XXXXXXXX<suffix>``;
# except the work folder of a resumable segment run, ``.OUT.glnet-work``
# (``work_folder``), whose name a later run must find again.

WORK_SUFFIX = ".glnet-work"


def work_folder(output: str | Path) -> Path:
    """The hidden folder of a resumable run's finished strips, beside ``output``."""
    output = Path(output)
    return output.parent / f".{output.name}{WORK_SUFFIX}"


def stale_temps(output: str | Path) -> list[Path]:
    """Temporary files and folders of ``output`` (``new_temp``) that exist, e.g. of a killed run."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    pattern = temp_pattern(output.name)
    try:
        return sorted(p for p in parent.iterdir() if pattern.match(p.name))
    except OSError:
        return []


def remove_stale(output: str | Path) -> None:
    """Remove what ``stale_temps`` finds (call only while no other run writes ``output``)."""
    for p in stale_temps(output):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def locked_folder(folder: Path) -> Iterator[bool]:
    """Create ``folder`` if needed and hold an exclusive lock on it while the block runs.

    Yields False, without waiting, if another process holds it (a run still
    working on the same output). Without ``fcntl`` (Windows) no lock is taken.
    """
    try:
        import fcntl
    except ImportError:
        folder.mkdir(exist_ok=True)
        yield True
        return
    for _ in range(3):
        created = not folder.exists()
        folder.mkdir(exist_ok=True)
        lock = folder / "lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            yield False
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False  # the folder was removed meanwhile by the run that finished
        if not same:
            os.close(fd)
            continue
        try:
            yield True
        finally:
            os.close(fd)
        return
    raise GlnetError(f"{folder}: could not be locked (removed repeatedly by another run?)")


# Less free space than this after a failed write: the write failed for want of space.
FULL_DISK_BYTES = 1 << 20


@contextmanager
def full_disk_as_error(path: str | Path) -> Iterator[None]:
    """Turn a failure of writing ``path`` (or temporary files beside it) on a full disk into
    ``GlnetError("PATH: no space left on device")``.

    GDAL, SQLite and torch report a full disk in words of their own (TIFF
    directory errors, SQL, Errno 28 without a path), and some as a different
    error altogether; so besides ``ENOSPC`` a failure is taken for a full
    disk when the output's file system has almost no space left. Enter it
    before the block that removes the temporary files: once they are gone the
    space is back.
    """
    try:
        yield
    except BaseException as exc:
        if _disk_full(exc, Path(path)):
            raise GlnetError(f"{path}: no space left on device") from None
        raise


def _disk_full(exc: BaseException, path: Path) -> bool:
    # A GlnetError (cancellation included) already says what went wrong.
    if not isinstance(exc, Exception) or isinstance(exc, GlnetError):
        return False
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(path.parent if str(path.parent) else ".").free < FULL_DISK_BYTES
    except OSError:
        return False


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``path``, over an existing file only with ``overwrite``.

    A hard link fails if ``path`` exists, in the same step that creates it, so
    of two runs to one output the later one is refused instead of replacing
    the other's.
    """
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError as exc:
        # File systems without hard links (FAT, some network shares): check,
        # then rename; a run that finishes in between can still be replaced.
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK, errno.ENOSYS):
            raise
        if path.exists():
            raise _appeared(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _appeared(path: Path) -> GlnetError:
    return GlnetError(f"{path}: appeared while this run was writing it (another run to the same "
                      "output?); left as it is and this run's result discarded (use --overwrite "
                      "to replace it)")
