"""A run's work folder beside its output: resumable strips, finished and found again.

A single-process run with a model file cuts its rows into strips of
``STRIP_ROWS`` rows of windows (``resume_strips``) and segments them in one
pass over the windows (``run_parts``; no window is computed twice), renaming
each strip's part files, and its counts beside them, into a work folder beside
the output (``files.work_folder``) as soon as its last cell is written; the
parts are then copied into the work files (``finish.assemble_parts``).

Invariants:
    the folder is locked while a run holds it (``locked``): a second run on
    the same output is refused, not interleaved. It records what the run is
    (``run_identity``: model digest, scene file, options, precision, strips);
    ``resume`` continues a killed run from the parts it finished, with the
    same mask, and refuses (``ResumeRefused``, the folder left as it is) a
    folder recorded by a different run. Without ``resume``, what a killed run
    left (beside the output and in the folder) is removed first. A run that
    ends, however it ends, removes the folder, except a ``resume`` run that is
    cancelled (Ctrl+C, SIGTERM), which keeps its finished strips for the next
    ``resume`` as a killed run does (``removed_after``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import Cancelled, GlnetError
from ..files import locked_folder, remove_stale, work_folder
from ..raster.masks import remove_quietly
from ..raster.windows import Strip
from ..raster.windows import strips as cut_strips
from .finish import WorkFiles, assemble_parts
from .plan import SegmentJob
from .report import Report
from .strips import StripResult, run_strip, segment_rows, strip_windows, work_writer

# Rows of windows per resumable strip: a killed run loses at most this many rows
# (and one more is computed again); an uninterrupted run computes no window twice.
STRIP_ROWS = 2


class ResumeRefused(GlnetError):
    """``resume`` found a work folder made by a different run (it is left as it is)."""


@dataclass
class WorkFolder:
    """A prepared work folder: the strips the run's rows are cut into, and those done."""

    path: Path
    strips: list[Strip]
    done: dict[int, StripResult]   # by strip index: finished by an earlier (killed) run

    @property
    def start(self) -> int:
        """The first strip left to segment (``len(strips)``: none)."""
        return next((s.index for s in self.strips if s.index not in self.done),
                    len(self.strips))


@contextmanager
def locked(job: SegmentJob) -> Iterator[Path]:
    """Hold the lock of ``job``'s work folder (created if needed) while the block runs.

    Raises ``GlnetError`` at once if another run holds it.
    """
    folder = work_folder(job.output)
    with locked_folder(folder) as mine:
        if not mine:
            raise GlnetError(f"{job.output}: another glnet run is writing it (its work folder "
                             f"{folder.name} is locked); wait for it to finish")
        yield folder


def prepare_folder(job: SegmentJob, model_path: Path | None, folder: Path, report: Report
                   ) -> WorkFolder:
    """Clean (or, resuming, check) the locked work folder and record the run in it.

    On any failure the folder is removed, except on ``ResumeRefused``, which
    leaves it as it was.
    """
    try:
        return _prepare(job, model_path, folder, report)
    except ResumeRefused:
        raise
    except BaseException:
        clear_folder(folder, keep_lock=False)
        raise


@contextmanager
def removed_after(job: SegmentJob, folder: Path) -> Iterator[None]:
    """Remove the work folder when the block ends, unless a ``resume`` run is cancelled."""
    try:
        yield
    except BaseException as exc:
        # A failed or cancelled run leaves nothing behind, unless it was a
        # --resume run that was cancelled (Ctrl+C, SIGTERM): that one keeps its
        # finished strips for the next --resume, as a killed run does.
        if not (job.opts.resume and isinstance(exc, (KeyboardInterrupt, Cancelled))):
            clear_folder(folder, keep_lock=False)
        raise
    clear_folder(folder, keep_lock=False)


def clear_folder(folder: Path, keep_lock: bool) -> None:
    """Remove ``folder``, or (``keep_lock``) everything in it but its lock file."""
    import shutil

    if not keep_lock:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for p in folder.iterdir():
        if p.name != "lock":
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _prepare(job: SegmentJob, model_path: Path | None, folder: Path, report: Report
             ) -> WorkFolder:
    """``prepare_folder`` without its clean-up on failure."""
    import json

    opts = job.opts
    # What a killed run left beside the outputs (its finished strips aside) is garbage now.
    for out in (job.output, job.probabilities):
        if out is not None:
            remove_stale(out)
    cut = resume_strips(job) if model_path is not None else [
        Strip(0, 0, job.grid.rows.size, 0, len(job.grid.rows) - 1)]
    record = folder / "run.json"
    identity = run_identity(job, model_path, cut)
    done: dict[int, StripResult] = {}
    if opts.resume:
        before = None
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            pass
        if before is not None and before != identity:
            what = next((k for k in identity if before.get(k) != identity[k]), "run")
            raise ResumeRefused(f"{job.output}: cannot resume: its work folder {folder.name} is from "
                             f"a different run ({what} differs); run without --resume to start "
                             "over")
        if before is not None:
            done = finished_strips(job, folder, cut)
    if not done:
        clear_folder(folder, keep_lock=True)
        if opts.resume:
            report(0.0, "resume: nothing to resume; starting from the beginning")
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps(identity, indent=1))
    os.replace(tmp, record)
    return WorkFolder(folder, cut, done)


def run_identity(job: SegmentJob, model_path: Path | None, cut: list[Strip]) -> dict:
    """What a resumable run is, recorded in its work folder: a run resumes only its own."""
    import hashlib

    def stat(path) -> list | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    model = None
    if model_path is not None:
        digest = hashlib.sha256()
        with open(model_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        model = digest.hexdigest()
    scene = os.fspath(job.scene)
    if not scene.startswith("/vsi"):
        scene = os.path.abspath(scene)
    ignored = {"overwrite", "resume", "overviews", "style", "cache_mb"}
    options = {f.name: repr(getattr(job.opts, f.name)) for f in fields(job.opts)
               if f.name not in ignored}
    # The resolved precision too: "auto" may mean another one on another machine.
    return {"model": model, "scene": scene, "scene file": stat(job.scene),
            "options": options, "precision": job.precision.name, "strips": [[s.lo, s.hi, s.first, s.last] for s in cut]}


def resume_strips(job: SegmentJob) -> list[Strip]:
    """The strips a single-process run finishes one by one (one if the scene has few rows)."""
    rows = job.grid.rows
    return cut_strips(rows, max(1, len(rows) // STRIP_ROWS))


def part_files(folder: Path, strip: Strip, with_probs: bool) -> tuple[Path, Path | None, Path]:
    """``strip``'s part files in ``folder``: its mask, its probabilities (or None), its counts."""
    stem = folder / f"strip-{strip.index:05d}"
    return (Path(f"{stem}.tif"), Path(f"{stem}-p.tif") if with_probs else None,
            Path(f"{stem}.json"))


_STAT_FIELDS = ("windows", "skipped", "patches", "refined", "model_seconds", "peak_blend_bytes",
                "nonfinite")


def _save_stats(path: Path, result: StripResult) -> None:
    import json

    data = {name: getattr(result, name) for name in _STAT_FIELDS}
    data["counts"] = [int(c) for c in result.counts]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _load_stats(path: Path, strip: Strip, classes: int) -> StripResult | None:
    import json

    try:
        data = json.loads(path.read_text())
        counts = np.array(data["counts"], np.int64)
        if counts.shape != (classes,):
            return None
        return StripResult(strip, counts, **{name: data[name] for name in _STAT_FIELDS})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_strips(job: SegmentJob, folder: Path, cut: list[Strip]) -> dict[int, StripResult]:
    """The strips of ``cut`` whose part files (and counts) are complete in ``folder``."""
    done = {}
    for strip in cut:
        mask, prob, stats = part_files(folder, strip, job.probabilities is not None)
        result = _load_stats(stats, strip, job.meta.net.num_classes)
        if result is not None and mask.exists() and (prob is None or prob.exists()):
            done[strip.index] = result
    return done


class _Parts:
    """Routes finished cells to the part files of their strips; a part is renamed into
    place, with its counts beside it, as soon as its last cell is written."""

    def __init__(self, job: SegmentJob, cut: list[Strip], start: int, folder: Path) -> None:
        self.job, self.cut, self.start, self.folder = job, cut, start, folder
        self.width = job.plan.work_size[1]
        self.classes = job.meta.net.num_classes
        self.results = {s.index: StripResult(s, np.zeros(self.classes, np.int64))
                        for s in cut[start:]}
        self.area = {s.index: 0 for s in cut[start:]}
        self.writers: dict[int, object] = {}
        self.acc = None
        for w in job.grid:
            k = self.owner(w.row)
            if k >= start:
                self.results[k].windows += 1

    def owner(self, row: int) -> int:
        """The strip a window row is counted in: the first that needs it."""
        return next(s.index for s in self.cut if s.last >= row)

    def stats_for(self, window) -> StripResult | None:
        return self.results.get(self.owner(window.row))

    def _temps(self, strip: Strip) -> tuple[Path, Path | None]:
        mask, prob, _ = part_files(self.folder, strip, self.job.probabilities is not None)
        return (Path(f"{mask}.tmp"), Path(f"{prob}.tmp") if prob else None)

    def emit(self, c) -> None:
        k = next(s.index for s in self.cut if c.top < s.hi)
        if k < self.start:
            return  # a row of a finished strip, computed again for the next one
        strip = self.cut[k]
        writer = self.writers.get(k)
        if writer is None:
            writer = self.writers[k] = work_writer(self.job, *self._temps(strip), strip)
        writer.write(c.top - strip.lo, c.left, c.height, c.width, c.probabilities, c.valid)
        self.area[k] += c.height * c.width
        if self.area[k] == strip.height * self.width:
            self._finish(strip)

    def _finish(self, strip: Strip) -> None:
        writer = self.writers.pop(strip.index)
        writer.close()
        result = self.results[strip.index]
        result.counts = writer.counts
        result.peak_blend_bytes = self.acc.peak_bytes if self.acc is not None else 0
        mask, prob, stats = part_files(self.folder, strip, self.job.probabilities is not None)
        tmp_mask, tmp_prob = self._temps(strip)
        if prob is not None:
            os.replace(tmp_prob, prob)
        os.replace(tmp_mask, mask)
        _save_stats(stats, result)

    def close(self) -> None:
        for k in list(self.writers):
            self.writers.pop(k).close()
            for p in self._temps(self.cut[k]):
                if p is not None:
                    remove_quietly(p)


def run_parts(job: SegmentJob, net, cut: list[Strip], start: int, folder: Path,
              progress: Callable[[float], None] | None = None) -> list[StripResult]:
    """Segment strips ``cut[start:]`` in one pass into their part files in ``folder``.

    The windows run in order from the first row ``cut[start]`` needs, as in a
    run over the whole region (no window is computed twice); each strip's part
    is complete, and renamed into place, as soon as its last window is done.
    """
    strip = cut[start]
    span = Strip(strip.index, strip.lo, cut[-1].hi, strip.first, cut[-1].last)
    parts = _Parts(job, cut, start, folder)
    try:
        segment_rows(job, net, strip_windows(job, span), parts.emit, parts.stats_for,
                      progress, on_acc=lambda acc: setattr(parts, "acc", acc))
    finally:
        parts.close()
    missing = [k for k, a in parts.area.items() if a != cut[k].height * parts.width]
    if missing:
        raise GlnetError(f"internal error: strips {missing} were not completed")
    return [parts.results[s.index] for s in cut[start:]]




def run_strips(job: SegmentJob, net, work: WorkFolder, files: WorkFiles, report: Report
               ) -> list[StripResult]:
    """Segment the strips of ``work`` not done yet and fill ``files`` with all of them.

    One strip is segmented straight into ``files``; several run in one pass
    into their part files (``run_parts``), which are then, with those an
    earlier run finished, copied into ``files``. Returns every strip's result.
    """
    from ..raster.tensors import torch_threads

    opts, cut, start = job.opts, work.strips, work.start
    height, width = job.plan.work_size
    grid = job.grid
    report(0.0, f"segmenting {width} x {height} px in {len(grid)} window(s) of "
                f"{grid.rows.length} x {grid.cols.length} px")
    share = 0.8 if job.resampled else 0.9
    if len(cut) == 1:
        with torch_threads(opts.threads):
            return [run_strip(job, net, cut[0], files.mask, files.probabilities,
                              lambda f: report(share * f))]
    reused = [work.done[s.index] for s in cut[:start]]
    total = max(len(job.grid), 1)  # every window is counted in one strip
    left = total - sum(r.windows for r in reused)
    base = share * (1 - left / total)
    new = []
    if start < len(cut):
        with torch_threads(opts.threads):
            new = run_parts(job, net, cut, start, work.path,
                            lambda f: report(base + (share - base) * f))
    report(share, "assembling the strips")
    with_probs = job.probabilities is not None
    assemble_parts(job, [(s, *part_files(work.path, s, with_probs)[:2]) for s in cut], files)
    return [*reused, *new]
