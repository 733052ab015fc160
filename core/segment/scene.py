"""Segment a scene of any size into a land-cover mask, streaming.

``segment(scene, model, output, options)`` is one straight line through the
modules beside this one: plan the job (``plan.py``: bands, region, AOI,
resampling, the window grid; every check before any work), prepare the
output's locked work folder (``resume.py``), run the strips (``strips.py``: GLNet
over a grid of context windows, ``raster/windows.py``, their class
probabilities blended with smooth weights into cells that are written as soon
as no later window touches them, ``probabilities.py``, ``raster/masks.py``), and
finish the mask, and optionally a probability raster, as Cloud Optimized
GeoTIFFs with overviews (``finish.py``). Memory holds a window and the blending
band below the current row of windows, never the scene.

files:
    everything is written to temporary files in the output's folder and
    renamed at the end; a failed or cancelled run leaves nothing behind.
resuming:
    a single-process run with a model file finishes its rows in strips
    (``resume.resume_strips``), each renamed into place in a locked work folder
    beside the output (``files.work_folder``) that records the run
    (``resume.run_identity``); ``resume`` continues a killed run from them,
    with the same mask. Without it, what a killed run left beside the output
    is removed first.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..config import SegmentOptions
from ..contract import ProgressFn
from ..modelfile import read_metadata
from .finish import SegmentResult, finish_outputs, open_outputs, write_style
from .plan import plan_job
from .report import CancelFn, Report
from .resume import locked, prepare_folder, removed_after, run_strips
from .strips import load_net, runtime_network


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
    report = Report(progress, cancel)
    report.check()
    model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    meta = read_metadata(model_path) if model_path is not None else model[1]
    job = plan_job(scene, meta, output, opts, model_path)
    with locked(job) as folder:
        work = prepare_folder(job, model_path, folder, report)
        with removed_after(job, folder):
            if opts.resume and work.done:
                report(0.0, f"resuming: {work.start} of {len(work.strips)} strips done")
            net, _ = load_net(model, model_path, opts)
            net = runtime_network(net, opts, job.precision.name, model_path)
            with open_outputs(job) as outputs:
                strips_done = run_strips(job, net, work, outputs.work, report)
                result = finish_outputs(job, outputs, strips_done, report)
            result.style = write_style(job, result.warnings)
    result.strips = len(work.strips)
    result.strips_reused = work.start
    result.seconds = time.perf_counter() - started
    if progress is not None:
        progress(1.0)
    return result
