"""Segment scenes on a Dask cluster: collections of scenes and strips of huge scenes.

``segment_scenes(scenes, model, outputs, options, client)`` plans every scene on
the client (all input and output checks happen before any work), cuts each
scene's rows into *strips* of context windows (``windows.strips``) so that the
cluster has about ``strips_per_worker`` tasks per worker (default one: each cut
costs a row of windows computed twice), and submits one Dask task per strip. A
task reads its windows straight from the source raster (local path or a GDAL
virtual file system path such as ``/vsicurl/`` or
``/vsis3/``), runs the model that its worker loaded once (``ModelPlugin``), and
writes its rows to a part file, renamed into place only when complete. When
all strips of a scene are done, the client copies the parts into one tiled
file and finishes the scene's COG exactly as a single-process run does
(``finish.open_outputs``, ``finish.finish_outputs``): the mask is identical to
``glnet segment``'s with the same ``threads``, because a strip computes and
blends its windows exactly as a whole-scene run does (the window row two
strips share is computed by both).

Scheduling, retries and moving the tasks of a worker that died to another
one are Dask's; a rerun strip overwrites its part with the same pixels.
Parts live in a hidden folder beside each output and are removed at the end,
whatever happens, and nothing reaches an output path before the rename.
Workers must see the scenes, the model and the output folder at the same
paths as the client (one machine, or a shared file system).

Dask is an optional dependency: ``pip install 'dask[distributed]'`` (the engine's
``distributed`` extra).
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import SegmentOptions
from ..contract import ProgressFn, new_temp
from ..errors import Cancelled, GlnetError
from ..modelfile import read_metadata
from ..raster.windows import Strip, strips
from .finish import SegmentResult, assemble_parts, finish_outputs, open_outputs, write_style
from .plan import SegmentJob, plan_job
from .report import Report
from .resume import part_files
from .strips import StripResult, run_strip


def _require_dask():
    try:
        import distributed
    except ImportError:
        raise GlnetError("--scheduler needs Dask: pip install 'dask[distributed]' (the engine's "
                         "'distributed' extra)") from None
    return distributed


@contextmanager
def connect(scheduler: str, threads_per_worker: int = 1):
    """A Dask ``Client``: ``local:N`` starts a LocalCluster of N worker processes.

    Anything else is a scheduler address (``tcp://host:8786``). Local workers
    get ``threads_per_worker`` threads each (the model's torch threads) and no
    dashboard.
    """
    distributed = _require_dask()
    if scheduler.startswith("local"):
        _, _, n = scheduler.partition(":")
        try:
            workers = int(n) if n else max(1, (os.cpu_count() or 1) // threads_per_worker)
        except ValueError:
            raise GlnetError(f"--scheduler {scheduler}: expected local:N with N a number of "
                             "workers, or a scheduler address") from None
        if workers < 1:
            raise GlnetError(f"--scheduler {scheduler}: need at least one worker")
        with distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                      processes=True, dashboard_address=None,
                                      silence_logs=40) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout="30s")
    except OSError as exc:
        raise GlnetError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({exc})") \
            from None
    with client:
        yield client


def _plugin_class():
    from distributed.diagnostics.plugin import WorkerPlugin

    class ModelPlugin(WorkerPlugin):
        """Loads the model once per worker, when the worker starts or joins."""

        def __init__(self, model: str, device: str, name: str) -> None:
            self.model = model
            self.device = device
            self.name = name
            self.net = None

        def setup(self, worker) -> None:
            from ..modelfile import load_model

            self.net, _ = load_model(self.model, device=self.device)
            self._runtimes = {}

        def runtime(self, opts, precision: str, threads: int):
            """The network a task runs (``strips.runtime_network``), made once per worker
            and setting: OpenVINO's compiled branches are shared by the worker's tasks."""
            from .strips import runtime_network

            key = (opts.backend, precision, threads)
            if key not in self._runtimes:
                self._runtimes[key] = runtime_network(
                    self.net, opts.replace(threads=threads), precision, Path(self.model))
            return self._runtimes[key]

    return ModelPlugin


def _strip_task(job: SegmentJob, strip: Strip, mask_part: str, prob_part: str | None,
                plugin: str, threads: int | None) -> StripResult:
    """Runs on a worker: one strip into its part files, renamed into place when complete."""
    import rasterio
    import torch
    from distributed import get_worker

    worker = get_worker()
    threads = threads or worker.state.nthreads
    net = worker.plugins[plugin].runtime(job.opts, job.precision.name, threads)
    tag = uuid.uuid4().hex[:8]
    tmp_mask = f"{mask_part}.{tag}.tmp"
    tmp_prob = f"{prob_part}.{tag}.tmp" if prob_part else None
    # Process-wide, and not put back: the worker process exists to run these
    # tasks, several at a time on its threads, and all of a run's tasks ask for
    # the same count; putting it back after each would change it under the others.
    torch.set_num_threads(threads)
    try:
        # No .aux.xml side files beside the parts; a bounded GDAL cache as in-process.
        with rasterio.Env(GDAL_CACHEMAX=job.opts.cache_mb * 2**20, GDAL_PAM_ENABLED="NO"):
            result = run_strip(job, net, strip, Path(tmp_mask),
                               Path(tmp_prob) if tmp_prob else None)
        if tmp_prob:
            os.replace(tmp_prob, prob_part)
        os.replace(tmp_mask, mask_part)
    finally:
        for p in (tmp_mask, tmp_prob):
            if p and os.path.exists(p):
                os.unlink(p)
    return result


@dataclass
class _Scene:
    job: SegmentJob
    strips: list[Strip]
    parts_dir: Path
    futures: list
    results: dict[int, StripResult]
    windows: int


def plan_strips(jobs: Sequence[SegmentJob], workers: int, strips_per_worker: int = 1
                ) -> list[list[Strip]]:
    """Strips of each job: about ``strips_per_worker`` tasks per worker in all.

    A scene gets strips in proportion to its windows (at least one, at most
    one per row of windows); each extra strip costs one row of windows more.
    """
    target = max(1, workers * strips_per_worker)
    total = sum(len(j.grid) for j in jobs) or 1
    out = []
    for job in jobs:
        rows = job.grid.rows
        count = min(len(rows), max(1, round(target * len(job.grid) / total)))
        out.append(strips(rows, count))
    return out


def output_paths(scenes: Sequence[str | Path], output: Path) -> list[Path]:
    """Where each scene's mask goes: ``output`` itself for one scene not given a folder,
    else ``output/<scene name>.tif`` (names must then be unique)."""
    if len(scenes) == 1 and not output.is_dir():
        return [output]
    if not output.is_dir():
        raise GlnetError(f"{output}: with several scenes the output must be an existing folder")
    names = [Path(os.fspath(s)).stem for s in scenes]
    seen = {}
    for scene, name in zip(scenes, names):
        if name in seen:
            raise GlnetError(f"{scene} and {seen[name]} would both be written to "
                             f"{output / (name + '.tif')}: rename one of them")
        seen[name] = scene
    return [output / f"{name}.tif" for name in names]


def segment_scenes(scenes: Sequence[str | Path], model: str | Path, outputs: Sequence[Path],
                   options: SegmentOptions | None, client, progress: ProgressFn | None = None,
                   cancel: Callable[[], bool] | None = None, strips_per_worker: int = 1
                   ) -> list[SegmentResult]:
    """Segment ``scenes`` into ``outputs`` on the Dask cluster behind ``client``.

    Results come in the order of ``scenes``. ``options.threads`` sets the
    torch threads of each task (default: the worker's thread count). A failed
    strip stops the run with its error; scenes already finished are kept,
    the others leave nothing behind.
    """
    from distributed import as_completed

    started = time.perf_counter()
    opts = options or SegmentOptions()
    if opts.probabilities is not None and len(scenes) > 1:
        raise GlnetError("--probabilities takes one scene at a time")
    model_path = Path(model)
    meta = read_metadata(model_path)
    if opts.mode == 3 and 3 not in meta.stages:
        raise GlnetError(f"{model_path}: mode 3 needs a model trained through stage 3")
    jobs = [plan_job(s, meta, o, opts, model_path) for s, o in zip(scenes, outputs)]
    workers = len(client.scheduler_info()["workers"])
    if workers == 0:
        raise GlnetError("the Dask cluster has no workers")

    name = f"glnet-model-{uuid.uuid4().hex[:8]}"
    plugin = _plugin_class()(str(model_path.resolve()), opts.device, name)
    client.register_plugin(plugin, name=name)
    states: list[_Scene] = []
    total = 0
    try:
        for job, cut in zip(jobs, plan_strips(jobs, workers, strips_per_worker)):
            parts = new_temp(job.output, ".parts", folder=True)
            state = _Scene(job, cut, parts, [], {}, 0)
            states.append(state)
            for strip in cut:
                mask_part, prob_part = _part_paths(state, strip)
                state.futures.append(client.submit(
                    _strip_task, job, strip, mask_part, prob_part, name, opts.threads,
                    key=f"glnet-strip-{parts.name}-{strip.index}", pure=False))
                state.windows += (strip.last - strip.first + 1) * len(job.grid.cols)
            total += state.windows
        owner = {f.key: s for s in states for f in s.futures}
        results: dict[int, SegmentResult] = {}
        done_windows = 0
        if progress:
            progress(0.0, f"segmenting {len(jobs)} scene(s) in {sum(len(s.strips) for s in states)}"
                          f" strip(s) on {workers} Dask worker(s)")
        for future in as_completed([f for s in states for f in s.futures]):
            if cancel is not None and cancel():
                raise Cancelled("cancelled; unfinished scenes were not written")
            state = owner[future.key]
            r: StripResult = future.result()
            state.results[r.strip.index] = r
            done_windows += r.windows
            if progress:
                progress(0.95 * done_windows / max(total, 1))
            if len(state.results) == len(state.strips):
                index = states.index(state)
                results[index] = _finish(state)
                results[index].seconds = time.perf_counter() - started
                shutil.rmtree(state.parts_dir, ignore_errors=True)
        if progress:
            progress(1.0)
        return [results[i] for i in range(len(states))]
    finally:
        for s in states:
            client.cancel(s.futures)
            shutil.rmtree(s.parts_dir, ignore_errors=True)
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # noqa: BLE001 - the cluster may be gone; nothing to undo then
            pass


def _part_paths(state: _Scene, strip: Strip) -> tuple[str, str | None]:
    # The same part names as a resumable run's work folder (resume.part_files).
    mask, prob, _ = part_files(state.parts_dir, strip, state.job.probabilities is not None)
    return str(mask), str(prob) if prob else None


def _finish(state: _Scene) -> SegmentResult:
    """Assemble a scene's parts and finish its COG, on the client."""
    job = state.job
    results = [state.results[s.index] for s in state.strips]
    parts = []
    for strip in state.strips:
        mask, prob = _part_paths(state, strip)
        parts.append((strip, Path(mask), Path(prob) if prob else None))
    with open_outputs(job) as outputs:
        assemble_parts(job, parts, outputs.work)
        result = finish_outputs(job, outputs, results, Report(None, None))
    result.style = write_style(job, result.warnings)
    result.windows = len(job.grid)
    return result


def strip_overhead(job: SegmentJob, cut: Sequence[Strip]) -> float:
    """Windows computed with these strips over windows of one whole-scene run (>= 1)."""
    rows = sum(s.last - s.first + 1 for s in cut)
    return rows / max(len(job.grid.rows), 1) if cut else math.nan
