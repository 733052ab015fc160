"""Planning a scene's run: every check on the inputs and outputs, and the window grid.

``plan_job(scene, meta, output, options)`` opens the scene (no model is
loaded), chooses its bands, the output region and the work grid the windows
live on, and returns a ``SegmentJob``: plain data that pickles, so that strips
can run on other processes (``glnet.segment.distributed``). Every input the run
would fail on raises ``GlnetError`` here, before any work is done.

bands:
    chosen and ordered with ``bands`` (1-based); a trailing alpha band is
    dropped automatically.
resolution:
    a scene whose ground resolution differs from the model's (or from
    ``resolution``) by more than ``resolution_tolerance`` is resampled to it (a
    warped VRT, read window by window: ``SegmentJob.source_kwargs``). A factor
    beyond ``MAX_RESAMPLE`` either way (a 30 m scene for a 0.5 m model is 60x,
    hours of windows) is refused unless ``force_resample``; ``describe_plan``
    says what a planned job will do.
geotransform:
    rotated and sheared geotransforms are handled when no resampling is needed
    (windows live in pixel space and the output keeps the input's transform);
    with resampling they are refused with a clear error.
extent and areas of interest:
    the output covers the extent or the AOI's bounding box, snapped outward to
    the scene's pixel grid (same CRS and pixel size, the transform shifted by
    whole pixels).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import SegmentOptions
from ..errors import GlnetError, OptionError
from ..files import check_output_path
from ..modelfile import ModelMeta
from ..nn.precision import Precision, resolve_precision
from ..raster.aoi import read_aoi
from ..raster.ground import ground_pixel_size
from ..raster.windows import Region, WindowGrid

# The largest resampling factor, either way, that ``segment`` accepts without ``force_resample``.
MAX_RESAMPLE = 4.0


@dataclass
class ScenePlan:
    """Where the output lies on the scene's grid and the work grid the windows run on."""

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


def _plan(src, scene: str | Path, meta: ModelMeta, opts: SegmentOptions) -> ScenePlan:
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
    return ScenePlan(bands, region, out_transform, factor, work_transform, work_size, aoi,
                     warnings, ground, target if factor is not None else None)


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
    plan: ScenePlan
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
    overlap = opts.window_overlap(window)
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
    if opts.backend == "openvino":
        from ..nn.openvino import available

        if not available():
            raise OptionError("--backend openvino needs the openvino package: "
                              "pip install 'glnet-qgis[openvino]' (or --backend torch)")
        if precision.name == "int8":
            from ..nn.openvino import INT8_MANIFEST, cache_folder

            if model_path is None:
                raise OptionError("precision int8 needs a model file that glnet quantize "
                                  "quantised (not a model in memory)", option="precision")
            if not (cache_folder(model_path) / INT8_MANIFEST).is_file():
                raise GlnetError(f"{model_path}: no int8 branches beside it (in "
                                 f"{cache_folder(model_path).name}/): run glnet quantize "
                                 f"{model_path.name} SCENE first, SCENE a raster like its "
                                 "training scene")

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


def resample_factor(plan: ScenePlan) -> float | None:
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


def _check_factor(scene, plan: ScenePlan, grid: WindowGrid, opts: SegmentOptions) -> None:
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

