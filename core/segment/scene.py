"""Segment a scene of any size into a land-cover mask, streaming.

``segment(scene, model, output, options)`` runs GLNet over a grid of context
windows (``raster/windows.py``), blends their class probabilities with smooth weights
into cells that are written as soon as no later window touches them
(``probabilities.py``, ``raster/masks.py``), and finishes the mask, and optionally a
probability raster, as Cloud Optimized GeoTIFFs with overviews. Memory holds a
window and the blending band below the current row of windows, never the scene.

Input handling:
    bands are chosen and ordered with ``bands`` (1-based); a trailing alpha band
    is dropped automatically. Pixels are scaled with the model's per-band
    statistics; nodata comes from the dataset's masks (nodata values, mask
    bands, alpha), a pixel being nodata where all chosen bands are. Windows
    without any valid pixel are skipped.
resolution:
    a scene whose ground resolution differs from the model's (or from
    ``resolution``) by more than ``resolution_tolerance`` is resampled to it (a
    warped VRT, read window by window) and the result back to the scene's grid.
    A factor beyond ``MAX_RESAMPLE`` either way (a 30 m scene for a 0.5 m model
    is 60x, hours of windows) is refused before any work unless
    ``force_resample``; ``describe_plan`` says what a planned job will do.
geotransform:
    rotated and sheared geotransforms are handled when no resampling is needed
    (windows live in pixel space and the output keeps the input's transform);
    with resampling they are refused with a clear error.
extent and areas of interest:
    the output covers the extent or the AOI's bounding box, snapped outward to
    the scene's pixel grid (same CRS and pixel size, the transform shifted by
    whole pixels); pixels outside the AOI polygons are nodata.
files:
    everything is written to temporary files in the output's folder and
    renamed at the end; a failed or cancelled run leaves nothing behind.
resuming:
    a single-process run with a model file finishes its rows in strips
    (``resume_strips``), each renamed into place in a locked work folder beside
    the output (``files.work_folder``) that records the run (``run_identity``);
    ``resume`` continues a killed run from them, with the same mask. Without
    it, what a killed run left beside the output is removed first.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..config import SegmentOptions
from ..contract import ProgressFn
from ..errors import Cancelled, GlnetError, OptionError
from ..files import (
    atomic_output,
    check_output_path,
    full_disk_as_error,
    locked_folder,
    remove_stale,
    work_folder,
)
from ..modelfile import ModelMeta, read_metadata
from ..nn.precision import Precision, resolve_precision
from ..raster.aoi import AreaOfInterest, read_aoi
from ..raster.ground import ground_pixel_size
from ..raster.windows import Region, Strip, WindowGrid, WindowReader
from ..raster.windows import strips as cut_strips

CancelFn = Callable[[], bool]

# The largest resampling factor, either way, that ``segment`` accepts without ``force_resample``.
MAX_RESAMPLE = 4.0


@dataclass
class SegmentResult:
    """What a run produced, for reports and tests."""

    output: Path
    probabilities: Path | None
    style: Path | None
    width: int
    height: int
    windows: int
    skipped: int
    patches: int
    refined: int
    valid_pixels: int
    class_pixels: dict[str, int]
    seconds: float
    resampled: bool
    work_size: tuple[int, int]
    peak_blend_bytes: int = 0
    model_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    strips: int = 1                # resumable strips the rows were cut into
    strips_reused: int = 0         # of them, finished by an earlier (killed) run and reused
    precision: str = "fp32"        # what the network ran in: "fp32" or "bf16"


class _Progress:
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


# -- the plan ----------------------------------------------------------------------------


@dataclass
class _Plan:
    bands: list[int]
    region: Region                 # output pixels, in the scene's grid
    out_transform: object          # Affine of the output
    resample: tuple[float, float] | None   # work pixel size / scene pixel size, per axis
    work_transform: object
    work_size: tuple[int, int]     # (height, width) of the work grid
    aoi: list | None               # shapely geometries in the scene's CRS
    warnings: list[str]
    ground: tuple[float, float] | None = None   # the scene's metres per pixel (x, y)
    target: float | None = None    # metres per pixel resampled to (with ``resample``)


def source_path(scene: str | Path) -> str | Path:
    """``scene`` as a ``Path``, or as the string it is for GDAL's virtual file systems.

    ``/vsicurl/https://...`` and ``/vsizip//abs/path.zip/x.tif`` hold double
    slashes that ``Path`` would collapse.
    """
    text = os.fspath(scene)
    return text if text.startswith("/vsi") else Path(text)


def _name(scene: str | Path) -> str:
    return os.path.basename(os.fspath(scene))


def _open_scene(scene: str | Path):
    import rasterio
    from rasterio.errors import RasterioIOError

    if isinstance(scene, Path):
        if not scene.exists():
            raise GlnetError(f"{scene}: input not found")
        if scene.is_dir():
            raise GlnetError(f"{scene}: is a folder, not a raster")
    try:
        return rasterio.open(scene)
    except RasterioIOError as exc:
        raise GlnetError(f"{scene}: not a raster GDAL can read ({exc})") from None


def _select_bands(src, requested: tuple[int, ...] | None, meta: ModelMeta,
                  scene: str | Path) -> list[int]:
    from rasterio.enums import ColorInterp

    n = meta.net.in_channels
    names = ", ".join(meta.bands)
    if requested is not None:
        bad = [b for b in requested if b > src.count]
        if bad:
            raise GlnetError(f"{scene} has {src.count} band(s); band {bad[0]} does not exist")
        if len(requested) != n:
            raise GlnetError(f"the model takes {n} band(s) ({names}); {len(requested)} chosen "
                             f"with bands {','.join(map(str, requested))}")
        return list(requested)
    if src.count == n:
        return list(range(1, n + 1))
    if src.count == n + 1 and src.colorinterp[-1] == ColorInterp.alpha:
        return list(range(1, n + 1))
    hint = ",".join(["1"] * n if src.count == 1 else (str(i) for i in range(1, n + 1)))
    raise GlnetError(f"{scene} has {src.count} band(s) but the model takes {n} ({names}); "
                     f"choose them in the model's order, e.g. --bands {hint}")


def _pixel_bounds(transform, xmin, ymin, xmax, ymax) -> tuple[float, float, float, float]:
    """Rows and columns (fractional) spanned by a box in map coordinates."""
    inv = ~transform
    corners = [inv @ (x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    cols = [c for c, _ in corners]
    rows = [r for _, r in corners]
    return min(rows), min(cols), max(rows), max(cols)


def _intersect(region: Region, rows_cols: tuple[float, float, float, float]) -> Region | None:
    r0, c0, r1, c1 = rows_cols
    eps = 1e-6
    top = max(region.row_off, math.floor(r0 + eps))
    left = max(region.col_off, math.floor(c0 + eps))
    bottom = min(region.row_off + region.height, math.ceil(r1 - eps))
    right = min(region.col_off + region.width, math.ceil(c1 - eps))
    if bottom <= top or right <= left:
        return None
    return Region(top, left, bottom - top, right - left)


def _plan(src, scene: str | Path, meta: ModelMeta, opts: SegmentOptions) -> _Plan:
    from affine import Affine

    warnings: list[str] = []
    bands = _select_bands(src, opts.bands, meta, scene)
    t = src.transform
    rotated = abs(t.b) > 1e-12 or abs(t.d) > 1e-12
    if src.crs is None and t == Affine.identity():
        warnings.append(f"{_name(scene)} is not georeferenced: the mask has no geotransform "
                        "either and lies on the image in pixel coordinates (as QGIS shows it)")
    dtypes = {src.dtypes[b - 1] for b in bands}
    if meta.dtype not in dtypes:
        warnings.append(f"the model was trained on {meta.dtype} rasters, the scene is "
                        f"{'/'.join(sorted(dtypes))}: scaled with the model's statistics anyway")

    region: Region | None = Region(0, 0, src.height, src.width)
    if opts.extent is not None:
        region = _intersect(region, _pixel_bounds(t, *opts.extent))
        if region is None:
            raise GlnetError(f"extent {','.join(f'{v:g}' for v in opts.extent)} does not "
                             f"overlap the scene {_name(scene)}")
    aoi = None
    if opts.aoi is not None:
        aoi = read_aoi(Path(opts.aoi), src.crs, opts.aoi_layer, warnings)
        xs0, ys0, xs1, ys1 = zip(*(g.bounds for g in aoi))
        region = _intersect(region, _pixel_bounds(t, min(xs0), min(ys0), max(xs1), max(ys1)))
        if region is None:
            raise GlnetError(f"the areas of interest in {opts.aoi} do not overlap the "
                             + ("extent" if opts.extent else f"scene {_name(scene)}"))
    out_transform = t @ Affine.translation(region.col_off, region.row_off)

    factor = None
    ground = ground_pixel_size(src.crs, t, src.width, src.height)
    target = opts.resolution or meta.resolution
    whose = "the model's" if opts.resolution is None else "the chosen"
    if target and ground and opts.resample:
        fx, fy = target / ground[0], target / ground[1]
        if max(abs(fx - 1), abs(fy - 1)) > opts.resolution_tolerance:
            if rotated:
                raise GlnetError(
                    f"{_name(scene)} has a rotated or sheared geotransform and a resolution of "
                    f"{ground[0]:.3g} m, {whose} {target:g} m: resample the scene to a "
                    f"north-up grid first (gdalwarp -tr), or turn resampling off")
            factor = (fx, fy)
            warnings.append(f"scene resolution {ground[0]:.3g} x {ground[1]:.3g} m resampled to "
                            f"{whose} {target:g} m and the mask back")
    elif target and ground is None:
        warnings.append("the scene's resolution is unknown (no CRS): not resampled")
    if factor is None:
        work_transform = out_transform
        work_size = (region.height, region.width)
    else:
        work_transform = out_transform @ Affine.scale(*factor)
        work_size = (max(1, math.ceil(region.height / factor[1] - 1e-9)),
                     max(1, math.ceil(region.width / factor[0] - 1e-9)))
    return _Plan(bands, region, out_transform, factor, work_transform, work_size, aoi, warnings,
                 ground, target if factor is not None else None)


# -- running -------------------------------------------------------------------------------


def _aoi_functions(plan: _Plan):
    """(mask_fn, skip_fn) of the reader for the areas of interest, or (None, None).

    Windows are in the work grid, whose origin ``plan.work_transform`` maps.
    """
    if plan.aoi is None:
        return None, None
    from affine import Affine

    aoi = AreaOfInterest(plan.aoi)
    base = plan.work_transform

    def skip(w) -> bool:
        return not aoi.touches(base @ Affine.translation(w.left, w.top), (w.height, w.width))

    def mask(w) -> np.ndarray:
        # On a resampled work grid, keep every cell the polygons touch: the exact
        # outline is applied again on the scene's own grid.
        return aoi.mask(base @ Affine.translation(w.left, w.top), (w.height, w.width),
                        all_touched=plan.resample is not None)

    return mask, skip


@dataclass(frozen=True)
class SegmentJob:
    """One scene's run, planned without the model: what a strip needs besides the network.

    Plain data (it pickles), so that strips can run on other processes
    (``glnet.segment.distributed``).
    """

    scene: str | Path              # a string for GDAL's /vsi... paths
    output: Path
    probabilities: Path | None
    meta: ModelMeta
    opts: SegmentOptions
    plan: _Plan
    crs: object
    grid: WindowGrid
    mode: int | None               # None: the fullest the model supports
    work_region: Region
    source_kwargs: dict | None     # a WarpedVRT onto the work grid, or None
    # Resolved once where the run is planned, so that every strip (and every Dask
    # worker) computes in the same precision and the plan line can say which.
    precision: Precision

    @property
    def resampled(self) -> bool:
        return self.plan.resample is not None


@dataclass
class StripResult:
    """What segmenting one strip (``run_strip``) produced; summed over strips."""

    strip: Strip
    counts: np.ndarray
    windows: int = 0
    skipped: int = 0
    patches: int = 0
    refined: int = 0
    model_seconds: float = 0.0
    peak_blend_bytes: int = 0
    nonfinite: int = 0


def plan_job(scene: str | Path, meta: ModelMeta, output: str | Path,
             options: SegmentOptions | None = None, model_path: Path | None = None) -> SegmentJob:
    """Check the inputs and outputs and plan the windows; no model is loaded.

    Raises ``GlnetError`` naming the file and the problem for every input
    the run would fail on, before any work is done.
    """
    import rasterio

    from ..nn.refinement import RefinePolicy

    opts = options or SegmentOptions()
    scene, output = source_path(scene), Path(output)
    inputs = [scene if isinstance(scene, Path) else None, model_path, Path(opts.aoi) if opts.aoi else None]
    check_output_path(output, opts.overwrite, inputs)
    prob_path = Path(opts.probabilities) if opts.probabilities is not None else None
    for path in (output, prob_path):
        if path is not None and path.suffix.lower() not in (".tif", ".tiff"):
            raise GlnetError(f"{path}: masks and probabilities are written as GeoTIFF (COG); "
                             "give the output a .tif or .tiff name")
    if prob_path is not None:
        if prob_path.resolve() == output.resolve():
            raise GlnetError(f"{prob_path}: the probability raster needs another path than the mask")
        check_output_path(prob_path, opts.overwrite, inputs)
    if isinstance(scene, Path) and output.resolve() == scene.resolve():
        raise GlnetError(f"{output}: output would overwrite the input")

    with rasterio.Env(GDAL_CACHEMAX=opts.cache_mb * 2**20, GDAL_PAM_ENABLED="NO"):
        with _open_scene(scene) as src:
            plan = _plan(src, scene, meta, opts)
            crs = src.crs

    policy = RefinePolicy(opts.refine, opts.confidence, tuple(opts.background))
    mode = opts.mode or (2 if policy.mode != "all" else None)
    if mode == 3 and policy.mode != "all":
        raise GlnetError("coarse to fine skips patches, which mode 3 cannot: use mode 2")
    if mode == 2 and meta.stages and max(meta.stages) < 2:
        raise GlnetError(f"{model_path or 'the model'} was trained through stage 1 only: its local "
                         "branch is untrained, so mode 2 and coarse to fine are not available "
                         "(use mode 1)")
    window = opts.window_size or meta.net.window_size
    if window < meta.net.patch_size:
        raise OptionError(f"window size {window} px is smaller than the model's patches "
                          f"({meta.net.patch_size} px)")
    overlap = opts.overlap if opts.overlap is not None else window // 4
    if overlap > window // 2:
        raise GlnetError(f"overlap {overlap} px is more than half the window ({window} px)")
    height, width = plan.work_size
    try:
        grid = WindowGrid.build(height, width, window, overlap, min(opts.blend, max(overlap, 1)))
    except ValueError as exc:
        raise GlnetError(str(exc)) from None
    _check_factor(scene, plan, grid, opts)
    precision = resolve_precision(opts.precision, opts.device)
    if precision.warning is not None:
        plan.warnings.append(precision.warning)

    if plan.resample is None:
        work_region, source_kwargs = plan.region, None
    else:
        from rasterio.enums import Resampling

        work_region = Region(0, 0, height, width)
        source_kwargs = dict(crs=crs, transform=plan.work_transform, width=width, height=height,
                             resampling=(Resampling.average if max(plan.resample) > 1
                                         else Resampling.bilinear))
    return SegmentJob(scene, output, prob_path, meta, opts, plan, crs, grid, mode, work_region,
                      source_kwargs, precision)


def resample_factor(plan: _Plan) -> float | None:
    """How many times finer (above 1) or coarser (below 1) the work grid is than the scene's."""
    if plan.resample is None:
        return None
    return 1 / max(plan.resample, key=lambda f: abs(math.log(f)))  # the axis that changes most


def _metres(value: float) -> str:
    return f"{value:.3g} m"


def _windows(grid: WindowGrid) -> str:
    h, w = grid.rows.length, grid.cols.length
    return f"{len(grid)} window{'s' if len(grid) != 1 else ''} of " + \
        (f"{h} px" if h == w else f"{h} x {w} px")


def describe_plan(job: SegmentJob) -> str:
    """One line of what ``job`` will do, e.g. ``plan: 30720 x 30720 px at 0.5 m (resampled
    60x from 30 m), 484 windows of 1880 px, bf16`` (the last: the precision the network
    runs in)."""
    plan = job.plan
    height, width = plan.work_size
    text = f"plan: {width} x {height} px"
    factor = resample_factor(plan)
    if factor is not None:
        text += (f" at {plan.target:g} m (resampled {factor:.3g}x from "
                 f"{_metres(plan.ground[0])})")
    elif plan.ground is not None:
        text += f" at {_metres(plan.ground[0])}"
    return f"{text}, {_windows(job.grid)}, {job.precision.name}"


def _check_factor(scene, plan: _Plan, grid: WindowGrid, opts: SegmentOptions) -> None:
    """Refuse a resampling factor beyond ``MAX_RESAMPLE`` either way, unless forced."""
    factor = resample_factor(plan)
    if factor is None or opts.force_resample or \
            abs(math.log(factor)) <= math.log(MAX_RESAMPLE) + 1e-9:
        return
    height, width = plan.work_size
    ground = plan.ground[0]
    nearest = ground / MAX_RESAMPLE if factor > 1 else ground * MAX_RESAMPLE
    whose = "the model's" if opts.resolution is None else "the chosen"
    raise OptionError(
        f"{_name(scene)}: {_metres(ground)} pixels resampled to {whose} {plan.target:g} m is "
        f"{factor:.3g}x (more than {MAX_RESAMPLE:g}x either way): {width} x {height} px in "
        f"{_windows(grid)}; give --resolution M (e.g. --resolution {nearest:.3g}: "
        f"{MAX_RESAMPLE:g}x), --no-resample to segment the scene's own pixels, or "
        "--force-resample to run it anyway")


def segment(scene: str | Path, model, output: str | Path, options: SegmentOptions | None = None,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> SegmentResult:
    """Segment ``scene`` with ``model`` into the class mask ``output`` (a COG).

    Args:
        scene: any raster GDAL reads.
        model: a model file, or an already loaded ``(GLNet, ModelMeta)`` pair.
        output: the mask to write; its folder must exist.
        options: every other setting (``SegmentOptions``).
        progress: called as ``progress(fraction)`` at least once per batch of
            patches, and ``progress(fraction, message)`` when a phase begins.
        cancel: called as often; returning True stops the run with ``Cancelled``
            and nothing is left at the destination.
    """
    opts = options or SegmentOptions()
    started = time.perf_counter()
    report = _Progress(progress, cancel)
    report.check()
    model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    meta = read_metadata(model_path) if model_path is not None else model[1]
    job = plan_job(scene, meta, output, opts, model_path)
    folder = work_folder(job.output)
    with locked_folder(folder) as mine:
        if not mine:
            raise GlnetError(f"{job.output}: another glnet run is writing it (its work folder "
                             f"{folder.name} is locked); wait for it to finish")
        try:
            cut, done = _prepare_folder(job, model_path, folder, report)
        except ResumeRefused:
            raise  # the folder is left as it was
        except BaseException:
            _clear_folder(folder, keep_lock=False)
            raise
        try:
            result = _segment_in(job, model, model_path, folder, cut, done, report)
        except BaseException as exc:
            # A failed or cancelled run leaves nothing behind, unless it was a
            # --resume run that was cancelled (Ctrl+C, SIGTERM): that one keeps its
            # finished strips for the next --resume, as a killed run does.
            if not (opts.resume and isinstance(exc, (KeyboardInterrupt, Cancelled))):
                _clear_folder(folder, keep_lock=False)
            raise
        _clear_folder(folder, keep_lock=False)
    result.seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0)
    return result


class ResumeRefused(GlnetError):
    """``resume`` found a work folder made by a different run (it is left as it is)."""


def _clear_folder(folder: Path, keep_lock: bool) -> None:
    import shutil

    if not keep_lock:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for p in folder.iterdir():
        if p.name != "lock":
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _prepare_folder(job: SegmentJob, model_path: Path | None, folder: Path, report: _Progress
                    ) -> tuple[list[Strip], dict[int, StripResult]]:
    """Clean (or, resuming, check) the locked work folder; returns the strips and those done."""
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
        _clear_folder(folder, keep_lock=True)
        if opts.resume:
            report(0.0, "resume: nothing to resume; starting from the beginning")
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps(identity, indent=1))
    os.replace(tmp, record)
    return cut, done


def _segment_in(job: SegmentJob, model, model_path: Path | None, folder: Path,
                cut: list[Strip], done: dict[int, StripResult], report: _Progress
                ) -> SegmentResult:
    """``segment`` holding the output's work folder ``folder``."""
    from ..raster.tensors import torch_threads

    opts = job.opts
    start = next((s.index for s in cut if s.index not in done), len(cut))
    if opts.resume and done:
        report(0.0, f"resuming: {start} of {len(cut)} strips done")
    net, _ = _load(model, model_path, job.opts)

    def run(job: SegmentJob, work: WorkFiles, report) -> list[StripResult]:
        share = 0.8 if job.resampled else 0.9
        if len(cut) == 1:
            with torch_threads(opts.threads):
                return [run_strip(job, net, cut[0], work.mask, work.probabilities,
                                  lambda f: report(share * f))]
        reused = [done[s.index] for s in cut[:start]]
        total = max(len(job.grid), 1)  # every window is counted in one strip
        left = total - sum(r.windows for r in reused)
        base = share * (1 - left / total)
        new = []
        if start < len(cut):
            with torch_threads(opts.threads):
                new = run_parts(job, net, cut, start, folder,
                                lambda f: report(base + (share - base) * f))
        report(share, "assembling the strips")
        with_probs = job.probabilities is not None
        assemble_parts(job, [(s, *_part_files(folder, s, with_probs)[:2]) for s in cut], work)
        return [*reused, *new]

    result = run_job(job, run, report)
    result.strips = len(cut)
    result.strips_reused = start
    return result


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


@dataclass
class WorkFiles:
    """The tiled GTiffs on the work grid that strips write to (or are assembled into)."""

    mask: Path
    probabilities: Path | None


def run_job(job: SegmentJob, run: Callable[[SegmentJob, WorkFiles, _Progress], list[StripResult]],
            report) -> SegmentResult:
    """Run ``job``: ``run`` fills the ``WorkFiles``; then finish the outputs.

    ``run`` either segments the whole region into the work files (``segment``)
    or assembles strips segmented elsewhere into them (``assemble_parts``).
    Every output goes to a temporary file beside its destination, renamed at
    the end; on any failure nothing is left.
    """
    import rasterio

    if not isinstance(report, _Progress):
        report = _Progress(report, None)
    opts = job.opts
    with rasterio.Env(GDAL_CACHEMAX=opts.cache_mb * 2**20, GDAL_PAM_ENABLED="NO"):
        with ExitStack() as stack:
            tmp_out = stack.enter_context(atomic_output(job.output, opts.overwrite))
            tmp_prob = (stack.enter_context(atomic_output(job.probabilities, opts.overwrite))
                        if job.probabilities else None)
            temps: list[Path] = []
            stack.callback(lambda: [_remove(p) for p in temps])
            stack.enter_context(full_disk_as_error(job.output))
            result = _run(job, run, tmp_out, tmp_prob, temps, report)
        style = None
        if opts.style:
            from ..raster.masks import write_qml

            qml = job.output.with_suffix(".qml")
            if qml.exists() and not opts.overwrite:
                result.warnings.append(f"{qml} exists: legend style not written (use overwrite)")
            else:
                style = write_qml(job.output, job.meta.classes)
    result.style = style
    return result


def _remove(path: Path) -> None:
    from ..raster.masks import remove_quietly

    remove_quietly(path)


def _load(model, model_path: Path | None, opts: SegmentOptions):
    from ..modelfile import load_model
    from ..raster.tensors import check_device

    target = check_device(opts.device)
    if model_path is not None:
        net, meta = load_model(model_path, device=opts.device)
    else:
        net, meta = model
        here = next(net.parameters()).device
        same_device = here.type == target.type and target.index in (None, here.index)
        if not same_device or net.training:
            # The caller's model stays where and as it was (a training loop may own it).
            import copy

            net = copy.deepcopy(net).to(target).eval()
    return net, meta


def _open_source(job: SegmentJob):
    import rasterio
    from rasterio.vrt import WarpedVRT

    @contextmanager
    def open_source():
        with rasterio.open(job.scene) as ds:
            if job.source_kwargs is None:
                yield ds
            else:
                with WarpedVRT(ds, **job.source_kwargs) as vrt:
                    yield vrt

    return open_source


def work_writer(job: SegmentJob, mask: Path, probabilities: Path | None,
                strip: Strip | None = None):
    """A ``MaskWriter`` on the work grid, or on the rows of ``strip`` of it."""
    from affine import Affine

    from ..raster.masks import MaskWriter

    height, width = job.plan.work_size
    transform = job.plan.work_transform
    if strip is not None:
        height = strip.height
        transform = transform @ Affine.translation(0, strip.lo)
    return MaskWriter(mask, job.meta.classes, width=width, height=height, crs=job.crs,
                      transform=transform, probabilities_path=probabilities,
                      probability_kind=job.opts.probability_kind)


def run_strip(job: SegmentJob, net, strip: Strip, mask: Path, probabilities: Path | None,
              progress: Callable[[float], None] | None = None) -> StripResult:
    """Segment the rows of ``strip`` into tiled GTiffs of just those rows.

    Windows are read, predicted and blended exactly as in a run over the
    whole region, so the strip's cells are those of that run.
    """
    windows = _strip_windows(job, strip)
    result = StripResult(strip, np.zeros(job.meta.net.num_classes, np.int64),
                         windows=len(windows))
    writer = work_writer(job, mask, probabilities, strip)

    def emit(c) -> None:
        if strip.lo <= c.top < strip.hi:
            writer.write(c.top - strip.lo, c.left, c.height, c.width, c.probabilities, c.valid)

    try:
        acc = _segment_rows(job, net, windows, emit, lambda w: result, progress)
    finally:
        writer.close()
    result.counts = writer.counts
    result.peak_blend_bytes = acc.peak_bytes
    return result


def _strip_windows(job: SegmentJob, strip: Strip) -> list:
    return [w for w in job.grid if strip.first <= w.row <= strip.last]


def _segment_rows(job: SegmentJob, net, windows: list, emit, stats_for,
                  progress: Callable[[float], None] | None, on_acc=None):
    """Read, predict and blend ``windows`` in order, handing finished cells to ``emit``.

    ``stats_for(window)`` is the ``StripResult`` a window is counted in (None:
    not counted). Returns the ``BandAccumulator`` (for its peak memory).
    """
    import torch

    from ..nn.predict import default_mode, predict_window
    from ..nn.refinement import RefinePolicy
    from ..raster.tensors import to_tensor
    from .probabilities import BandAccumulator

    opts, meta = job.opts, job.meta
    policy = RefinePolicy(opts.refine, opts.confidence, tuple(opts.background))
    mode = job.mode or default_mode(net, tuple(job.meta.stages))
    if mode == 3 and not net.has_context_branch:
        raise GlnetError("mode 3 needs a model trained through stage 3")
    grid = job.grid
    mask_fn, skip_fn = _aoi_functions(job.plan)
    n = max(len(windows), 1)
    unused = StripResult(Strip(0, 0, 0, 0, 0), np.zeros(0, np.int64))
    acc = BandAccumulator(grid, meta.net.num_classes, emit)
    if on_acc is not None:
        on_acc(acc)
    with WindowReader(_open_source(job), grid, job.work_region, job.plan.bands,
                      mask_fn=mask_fn, skip=skip_fn, windows=windows,
                      name=os.fspath(job.scene)) as reader:
        for i, item in enumerate(reader):
            w = item.window
            result = stats_for(w) or unused
            result.nonfinite += item.nonfinite
            if progress is not None:
                progress(i / n)
            if item.array is None:
                result.skipped += 1
                acc.add(w, None, None)
                continue
            x = to_tensor(item.array, meta.mean, meta.std, item.valid).to(opts.device)
            item.array = None

            def on_batch(done, total, _i=i):
                if progress is not None:
                    progress((_i + done / max(total, 1)) / n)

            started = time.perf_counter()
            pred = predict_window(net, x, mode=mode, policy=policy, sub_batch=opts.sub_batch,
                                  smooth_patches=opts.smooth_patches, on_batch=on_batch,
                                  precision=job.precision.name)
            result.model_seconds += time.perf_counter() - started
            del x
            result.patches += pred.patches
            result.refined += pred.refined
            probs = pred.probabilities.float()
            if probs.device.type != "cpu":
                probs = probs.cpu()
            acc.add(w, probs.numpy(), item.valid)
            del pred, probs
    if progress is not None:
        progress(1.0)
    if opts.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return acc


# -- resumable runs: strips finished into a work folder beside the output -----------------

# Rows of windows per resumable strip: a killed run loses at most this many rows
# (and one more is computed again); an uninterrupted run computes no window twice.
STRIP_ROWS = 2


def resume_strips(job: SegmentJob) -> list[Strip]:
    """The strips a single-process run finishes one by one (one if the scene has few rows)."""
    rows = job.grid.rows
    return cut_strips(rows, max(1, len(rows) // STRIP_ROWS))


def _part_files(folder: Path, strip: Strip, with_probs: bool) -> tuple[Path, Path | None, Path]:
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
        mask, prob, stats = _part_files(folder, strip, job.probabilities is not None)
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
        mask, prob, _ = _part_files(self.folder, strip, self.job.probabilities is not None)
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
        mask, prob, stats = _part_files(self.folder, strip, self.job.probabilities is not None)
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
                    _remove(p)


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
        _segment_rows(job, net, _strip_windows(job, span), parts.emit, parts.stats_for,
                      progress, on_acc=lambda acc: setattr(parts, "acc", acc))
    finally:
        parts.close()
    missing = [k for k, a in parts.area.items() if a != cut[k].height * parts.width]
    if missing:
        raise GlnetError(f"internal error: strips {missing} were not completed")
    return [parts.results[s.index] for s in cut[start:]]


def assemble_parts(job: SegmentJob, parts: list[tuple[Strip, Path, Path | None]],
                   work: WorkFiles, rows: int = 512) -> None:
    """Copy strips' part files, block by block, into the work files."""
    import rasterio
    from rasterio.windows import Window

    writer = work_writer(job, work.mask, work.probabilities)
    try:
        for strip, mask_part, prob_part in sorted(parts, key=lambda p: p[0].lo):
            pairs = [(mask_part, writer.mask)]
            if prob_part is not None and writer.probs is not None:
                pairs.append((prob_part, writer.probs))
            for part, dst in pairs:
                with rasterio.open(part) as src:
                    for top in range(0, strip.height, rows):
                        h = min(rows, strip.height - top)
                        block = src.read(window=Window(0, top, src.width, h))
                        dst.write(block, window=Window(0, strip.lo + top, src.width, h))
    finally:
        writer.close()


def _run(job: SegmentJob, run, tmp_out, tmp_prob, temps, report) -> SegmentResult:
    from ..files import default_permissions
    from ..raster.masks import finish_cog, temp_path

    opts, meta, plan, output = job.opts, job.meta, job.plan, job.output
    with_probs = job.probabilities is not None

    def new_temp(tag: str) -> Path:
        path = temp_path(output, tag)
        temps.append(path)
        return path

    # Tiled GTiffs on the output grid, later copied to COGs; with resampling the
    # windows write to work-grid files first.
    mask_tiled = new_temp("tiled")
    prob_tiled = new_temp("ptiled") if with_probs else None
    resampled = job.resampled
    work = WorkFiles(new_temp("work") if resampled else mask_tiled,
                     (new_temp("pwork") if resampled else prob_tiled) if with_probs else None)
    height, width = plan.work_size
    grid = job.grid
    report(0.0, f"segmenting {width} x {height} px in {len(grid)} window(s) of "
                f"{grid.rows.length} x {grid.cols.length} px")
    strips_done = run(job, work, report)
    share = 0.8 if resampled else 0.9
    report(share)
    counts = sum((r.counts for r in strips_done), np.zeros(meta.net.num_classes, np.int64))
    if resampled:
        report(share, "resampling to the scene's grid")
        counts = _resample_back(job.scene, plan, work.mask, mask_tiled, work.probabilities,
                                prob_tiled, meta, opts, report)
    if int(counts.sum()) == 0:
        what = "area of interest" if opts.aoi else ("extent" if opts.extent else "scene")
        raise GlnetError(f"{job.scene}: no valid pixels in the {what} (all nodata); "
                         "nothing written")

    report(0.9, "writing the Cloud Optimized GeoTIFF")
    finish_cog(mask_tiled, tmp_out, categorical=True, overviews=opts.overviews)
    default_permissions(tmp_out)
    _remove(mask_tiled)
    if prob_tiled is not None:
        report(0.95, "writing the probability COG")
        finish_cog(prob_tiled, tmp_prob, categorical=False, overviews=opts.overviews)
        default_permissions(tmp_prob)
        _remove(prob_tiled)
    report.check()
    names = [c.name for c in meta.classes]
    return SegmentResult(
        output=output, probabilities=job.probabilities, style=None, width=plan.region.width,
        height=plan.region.height, windows=len(grid), skipped=sum(r.skipped for r in strips_done),
        patches=sum(r.patches for r in strips_done), refined=sum(r.refined for r in strips_done),
        valid_pixels=int(counts.sum()),
        class_pixels={name: int(c) for name, c in zip(names, counts)}, seconds=0.0,
        resampled=resampled, work_size=plan.work_size,
        peak_blend_bytes=max(r.peak_blend_bytes for r in strips_done),
        model_seconds=sum(r.model_seconds for r in strips_done), precision=job.precision.name,
        warnings=[*plan.warnings, *_nonfinite_warning(sum(r.nonfinite for r in strips_done))])


def _nonfinite_warning(count: int) -> list[str]:
    if not count:
        return []
    return [f"{count:,} pixel(s) of NaN or infinite values treated as nodata (255 in the mask)"]


def _resample_back(scene, plan: _Plan, mask_work, mask_tiled, prob_work, prob_tiled, meta, opts,
                   report) -> np.ndarray:
    """Warp the work-grid results onto the output grid block by block; returns class counts.

    Classes by nearest neighbour, probabilities bilinearly; the scene's own
    nodata (and the AOI) is applied again at full resolution.
    """
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from ..raster.masks import NODATA, MaskWriter

    region = plan.region
    aoi = AreaOfInterest(plan.aoi) if plan.aoi is not None else None
    counts = np.zeros(meta.net.num_classes, dtype=np.int64)
    with rasterio.open(scene) as src, rasterio.open(mask_work) as mw, ExitStack() as stack:
        crs = src.crs
        writer = MaskWriter(mask_tiled, meta.classes, width=region.width, height=region.height,
                            crs=crs, transform=plan.out_transform, probabilities_path=prob_tiled,
                            probability_kind=opts.probability_kind)
        stack.callback(writer.close)
        common = dict(crs=crs, transform=plan.out_transform, width=region.width,
                      height=region.height, nodata=NODATA)
        mvrt = stack.enter_context(WarpedVRT(mw, resampling=Resampling.nearest, **common))
        pvrt = None
        if prob_work is not None:
            pw = stack.enter_context(rasterio.open(prob_work))
            pvrt = stack.enter_context(WarpedVRT(pw, resampling=Resampling.bilinear, **common))
        step = 512
        rows = range(0, region.height, step)
        for bi, top in enumerate(rows):
            report(0.8 + 0.1 * bi / len(rows))
            h = min(step, region.height - top)
            for left in range(0, region.width, step):
                w = min(step, region.width - left)
                win = Window(left, top, w, h)
                labels = mvrt.read(1, window=win)
                valid = (src.read_masks(plan.bands, window=Window(
                    region.col_off + left, region.row_off + top, w, h)) > 0).any(axis=0)
                valid &= labels != NODATA
                if aoi is not None:
                    valid &= aoi.mask(plan.out_transform @ Affine.translation(left, top), (h, w))
                labels[~valid] = NODATA
                counts += np.bincount(labels[valid], minlength=len(counts))[:len(counts)]
                writer.mask.write(labels[None], window=win)
                if pvrt is not None:
                    probs = pvrt.read(window=win)
                    probs[:, ~valid] = NODATA
                    writer.probs.write(probs, window=win)
    return counts
