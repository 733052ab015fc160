"""Finishing a run: the work files become the mask (and probability) COGs and the result.

Strips write to tiled GTiffs on the work grid (``WorkFiles``), directly or
through part files copied in with ``assemble_parts``. ``open_outputs(job)``
makes those files, and every other one a run writes, as temporary files beside
the destinations; ``finish_outputs`` resamples the work grid back onto the
scene's grid when the job was resampled (classes by nearest neighbour,
probabilities bilinearly, the scene's nodata and the AOI applied again at full
resolution), writes the Cloud Optimized GeoTIFFs with overviews and sums the
strips' counts into a ``SegmentResult``; ``write_style`` adds the QGIS legend.

Files: nothing reaches an output path before the renames when the
``open_outputs`` block ends without an error; on any failure or cancellation
every temporary file is removed and nothing is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import GlnetError
from ..files import atomic_output, full_disk_as_error
from ..raster.aoi import AreaOfInterest
from ..raster.windows import Strip
from .plan import ScenePlan, SegmentJob
from .report import Report
from .strips import StripResult, work_writer


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

@dataclass
class WorkFiles:
    """The tiled GTiffs on the work grid that strips write to (or are assembled into)."""

    mask: Path
    probabilities: Path | None

@dataclass
class Outputs:
    """The temporary files of a run, beside its outputs (``open_outputs``)."""

    mask: Path                     # the mask COG, renamed onto ``job.output`` at the end
    probabilities: Path | None     # the probability COG, renamed onto ``job.probabilities``
    mask_tiled: Path               # tiled GTiffs on the output grid, copied to the COGs
    probabilities_tiled: Path | None
    work: WorkFiles                # the tiled files themselves unless the job is resampled


@contextmanager
def open_outputs(job: SegmentJob) -> Iterator[Outputs]:
    """The temporary files of ``job``'s run, renamed onto its outputs when the block ends.

    The block runs in the job's GDAL environment (its cache size; no .aux.xml
    side files), and a full disk is reported as ``GlnetError`` naming the
    output. On any failure every temporary file is removed and no output is
    touched.
    """
    import rasterio

    from ..raster.masks import temp_path

    opts = job.opts
    with rasterio.Env(GDAL_CACHEMAX=opts.cache_mb * 2**20, GDAL_PAM_ENABLED="NO"):
        with ExitStack() as stack:
            tmp_out = stack.enter_context(atomic_output(job.output, opts.overwrite))
            tmp_prob = (stack.enter_context(atomic_output(job.probabilities, opts.overwrite))
                        if job.probabilities else None)
            temps: list[Path] = []
            stack.callback(lambda: [_remove(p) for p in temps])
            stack.enter_context(full_disk_as_error(job.output))

            def new_temp(tag: str) -> Path:
                path = temp_path(job.output, tag)
                temps.append(path)
                return path

            # Tiled GTiffs on the output grid, later copied to COGs; with resampling the
            # windows write to work-grid files first.
            with_probs = job.probabilities is not None
            mask_tiled = new_temp("tiled")
            prob_tiled = new_temp("ptiled") if with_probs else None
            resampled = job.resampled
            work = WorkFiles(new_temp("work") if resampled else mask_tiled,
                             (new_temp("pwork") if resampled else prob_tiled) if with_probs
                             else None)
            yield Outputs(tmp_out, tmp_prob, mask_tiled, prob_tiled, work)


def finish_outputs(job: SegmentJob, outputs: Outputs, strips_done: list[StripResult],
                   report: Report) -> SegmentResult:
    """Turn the work files that ``strips_done`` filled into the COGs; returns the result.

    Raises ``GlnetError`` if no pixel of the region was valid (nothing is
    written then).
    """
    from ..files import default_permissions
    from ..raster.masks import finish_cog

    opts, meta, plan, output = job.opts, job.meta, job.plan, job.output
    work, mask_tiled, prob_tiled = outputs.work, outputs.mask_tiled, outputs.probabilities_tiled
    resampled = job.resampled
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
    finish_cog(mask_tiled, outputs.mask, categorical=True, overviews=opts.overviews)
    default_permissions(outputs.mask)
    _remove(mask_tiled)
    if prob_tiled is not None:
        report(0.95, "writing the probability COG")
        finish_cog(prob_tiled, outputs.probabilities, categorical=False, overviews=opts.overviews)
        default_permissions(outputs.probabilities)
        _remove(prob_tiled)
    report.check()
    names = [c.name for c in meta.classes]
    grid = job.grid
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


def write_style(job: SegmentJob, warnings: list[str]) -> Path | None:
    """Write the mask's QGIS legend style (``<mask>.qml``) if the options ask for it.

    An existing style is replaced only with ``overwrite``; otherwise a warning
    says why none was written. Returns the style's path, or None.
    """
    opts = job.opts
    if not opts.style:
        return None
    from ..raster.masks import write_qml

    qml = job.output.with_suffix(".qml")
    if qml.exists() and not opts.overwrite:
        warnings.append(f"{qml} exists: legend style not written (use overwrite)")
        return None
    return write_qml(job.output, job.meta.classes)


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


def _remove(path: Path) -> None:
    from ..raster.masks import remove_quietly

    remove_quietly(path)


def _nonfinite_warning(count: int) -> list[str]:
    if not count:
        return []
    return [f"{count:,} pixel(s) of NaN or infinite values treated as nodata (255 in the mask)"]


def _resample_back(scene, plan: ScenePlan, mask_work, mask_tiled, prob_work, prob_tiled, meta,
                   opts, report) -> np.ndarray:
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
