"""Running strips of a planned job: windows read, predicted and blended into mask rows.

A *strip* is a band of rows of the work grid and the rows of windows that
cover it (``raster.windows.Strip``). ``run_strip`` segments one into tiled
GTiffs of just its rows; ``segment_rows`` is the loop under it and under
``resume.run_parts``: the reader (``raster.windows.WindowReader``, with the
areas of interest), the network (``nn.predict.predict_window``) and the
blending band (``probabilities.BandAccumulator``), which hands finished cells
to an ``emit`` function. Windows are read, predicted and blended exactly as in
a run over the whole region, in the same order, so a strip's cells are that
run's cells: the mask does not depend on how the rows were cut.

Input handling: pixels are scaled with the model's per-band statistics;
nodata comes from the dataset's masks (nodata values, mask bands, alpha), a
pixel being nodata where all chosen bands are. Windows without any valid
pixel (or outside every AOI polygon) are skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import SegmentOptions
from ..errors import GlnetError
from ..raster.aoi import AreaOfInterest
from ..raster.windows import Strip, WindowReader
from .plan import ScenePlan, SegmentJob


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


def load_net(model, model_path: Path | None, opts: SegmentOptions):
    """The network to run on ``opts.device``: loaded from ``model_path``, or the caller's
    ``(net, meta)`` pair, copied (in eval mode) if it is elsewhere or training."""
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


def runtime_network(net, opts: SegmentOptions, precision: str, model_path: Path | None = None):
    """The network that ``predict_window`` runs: ``net`` itself (backend torch), or
    its branches compiled by OpenVINO (``nn.openvino``), cached beside ``model_path``."""
    if opts.backend != "openvino":
        return net
    from ..nn.openvino import OpenVINONetwork, cache_folder

    cache = cache_folder(model_path) if model_path is not None else None
    return OpenVINONetwork(net, precision=precision, threads=opts.threads, cache=cache)


def _open_source(job: SegmentJob):
    """A function opening the job's source: the scene, or a warped VRT onto the work grid."""
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
    windows = strip_windows(job, strip)
    result = StripResult(strip, np.zeros(job.meta.net.num_classes, np.int64),
                         windows=len(windows))
    writer = work_writer(job, mask, probabilities, strip)

    def emit(c) -> None:
        if strip.lo <= c.top < strip.hi:
            writer.write(c.top - strip.lo, c.left, c.height, c.width, c.probabilities, c.valid)

    try:
        acc = segment_rows(job, net, windows, emit, lambda w: result, progress)
    finally:
        writer.close()
    result.counts = writer.counts
    result.peak_blend_bytes = acc.peak_bytes
    return result


def strip_windows(job: SegmentJob, strip: Strip) -> list:
    """The windows of the rows of windows ``strip`` covers, in the grid's order."""
    return [w for w in job.grid if strip.first <= w.row <= strip.last]


def segment_rows(job: SegmentJob, net, windows: list, emit, stats_for,
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


def _aoi_functions(plan: ScenePlan):
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
