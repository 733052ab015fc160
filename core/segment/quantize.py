"""int8 branches for the OpenVINO backend: post-training quantisation calibrated on a scene.

``quantize(model, scene)`` plans ``scene`` as ``segment`` would (bands,
resampling, the window grid), reads ``windows + held_out`` windows spread
evenly over the grid (windows without valid pixels are passed over), and runs
the model's OpenVINO branches in fp32 on the first ``windows`` of them while
recording every branch call's inputs. Each branch is then quantised to int8
with NNCF (``nncf.quantize``, its default symmetric preset), calibrated on
those inputs. The int8 network's classes are compared with fp32's on the
``held_out`` windows, which calibration never saw: only if they agree on at
least ``min_agreement`` of the valid pixels are the int8 branches kept, in the
model's cache folder (``nn.openvino.cache_folder``) with a record
(``int8.json``: the weights they were made from, the scene, the agreement).
``segment`` with ``backend="openvino", precision="int8"`` then runs them.

The scene should be like those the model will segment: its training scene,
or one of them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import QuantizeOptions, SegmentOptions
from ..errors import GlnetError, OptionError
from ..files import atomic_output
from .report import Report


@dataclass
class QuantizeResult:
    """What ``quantize`` measured and kept.

    Attributes:
        folder: the cache folder that holds the int8 branches.
        agreement: share of the held-out windows' valid pixels whose class int8
            keeps (fp32 OpenVINO as the reference).
        pixels: valid pixels compared.
        windows, held_out: windows used for calibration, and for the comparison.
        branches: the branch calls quantised, as "kind C x H x W" strings.
        kept: whether the int8 branches were kept (agreement >= min_agreement).
    """

    folder: Path
    agreement: float
    pixels: int
    windows: int
    held_out: int
    branches: list[str]
    kept: bool


def quantize(model: str | os.PathLike, scene: str | os.PathLike,
             options: QuantizeOptions | None = None, progress=None) -> QuantizeResult:
    """Quantise ``model``'s OpenVINO branches to int8, calibrated on ``scene``; see the module.

    Raises ``GlnetError`` (one line, naming the file) when openvino or nncf is
    missing, the scene has too few windows with valid pixels, or int8 agrees
    with fp32 on less than ``min_agreement`` of the held-out pixels (nothing
    is kept then).
    """
    import importlib.util

    opts = options or QuantizeOptions()
    for package, extra in (("openvino", "openvino"), ("nncf", "int8")):
        if importlib.util.find_spec(package) is None:
            raise OptionError(f"glnet quantize needs the {package} package: "
                              f"pip install 'glnet-qgis[{extra}]'")
    import torch

    from ..modelfile import load_model, read_metadata
    from ..nn.openvino import INT8_MANIFEST, OpenVINONetwork, cache_folder
    from ..nn.predict import default_mode, predict_window
    from ..raster.tensors import torch_threads
    from .plan import plan_job

    model = Path(model)
    meta = read_metadata(model)
    seg = SegmentOptions(bands=opts.bands, threads=opts.threads, backend="openvino",
                         precision="fp32", overviews=False, style=False)
    with tempfile.TemporaryDirectory(prefix="glnet-quantize-") as tmp:
        # The plan checks the scene as segment does; its output is never written.
        job = plan_job(scene, meta, Path(tmp) / "calibration.tif", seg, model)
    report = Report(progress, None)
    report(0.0, "reading calibration windows")
    tensors = _windows(job, opts.windows + opts.held_out)
    if len(tensors) < 2:
        raise GlnetError(f"{scene}: {len(tensors)} window(s) of {job.grid.rows.length} px with "
                         "valid pixels: too few to calibrate int8 and check it (2 or more)")
    held = max(1, round(len(tensors) * opts.held_out / (opts.windows + opts.held_out)))
    calibration, checks = tensors[:len(tensors) - held], tensors[len(tensors) - held:]

    with torch_threads(opts.threads), torch.no_grad():
        net, _ = load_model(model)
        mode = job.mode or default_mode(net, tuple(meta.stages))
        folder = cache_folder(model)
        fp32 = OpenVINONetwork(net, "fp32", opts.threads, cache=folder)
        fp32.record = {}
        for i, (x, _) in enumerate(calibration):
            report(0.1 + 0.3 * i / len(calibration))
            predict_window(fp32, x, mode=mode, sub_batch=1, smooth_patches=True)
        record, fp32.record = fp32.record, None
        reference = [predict_window(fp32, x, mode=mode, sub_batch=1, smooth_patches=True)
                     .probabilities.argmax(0).numpy() for x, _ in checks]

        int8 = OpenVINONetwork(net, "fp32", opts.threads, cache=None)
        quantised = {}
        for i, (key, samples) in enumerate(sorted(record.items(), key=lambda kv: kv[0][0])):
            report(0.4 + 0.5 * i / len(record), f"quantising the {key[0]} branch")
            samples = _spread(samples, opts.samples)
            source = fp32.fp32_model(key, [torch.from_numpy(a) for a in samples[0]])
            with _quiet():
                import nncf

                quantised[key] = nncf.quantize(source, nncf.Dataset(samples),
                                               subset_size=len(samples))
            int8.use(key, quantised[key])
        same = total = 0
        for (x, valid), ref in zip(checks, reference):
            got = predict_window(int8, x, mode=mode, sub_batch=1,
                                 smooth_patches=True).probabilities.argmax(0).numpy()
            same += int(((got == ref) & valid).sum())
            total += int(valid.sum())
    agreement = same / max(total, 1)
    branches = [f"{k[0]} {' x '.join(map(str, k[1][1:]))}" for k in quantised]
    result = QuantizeResult(folder, agreement, total, len(calibration), len(checks), branches,
                            agreement >= opts.min_agreement)
    if not result.kept:
        raise GlnetError(f"{model}: int8 keeps the class of {100 * agreement:.2f} % of "
                         f"{total} held-out pixels, below {100 * opts.min_agreement:g} %: "
                         "no int8 branches kept (segment in fp32 or bf16)")
    for key, q in quantised.items():
        fp32.save_int8(key, q)
    import nncf
    import openvino

    record = {"weights": fp32.digest, "scene": os.fspath(scene), "agreement": agreement,
              "pixels": total, "windows": len(calibration), "held_out": len(checks),
              "mode": mode, "branches": branches, "openvino": openvino.__version__,
              "nncf": nncf.__version__, "options": asdict(opts)}
    with atomic_output(folder / INT8_MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    report(1.0)
    return result


@contextlib.contextmanager
def _quiet():
    """NNCF's log lines and progress bars kept off stdout and stderr while it runs.

    NNCF logs to stdout and draws rich progress bars there (stdout is the
    command's result; stderr carries our own progress), and importing it makes
    torch log that no CUDA runtime is found. Their levels are put back after.
    """
    import logging

    loggers = [logging.getLogger(n) for n in ("nncf", "torch.utils.cpp_extension")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _windows(job, count: int) -> list[tuple]:
    """Up to ``count`` normalised windows of ``job``'s grid, spread evenly, with valid pixels."""
    from ..raster.tensors import to_tensor
    from ..raster.windows import WindowReader
    from .strips import _aoi_functions, _open_source

    grid = list(job.grid)
    order = np.unique(np.linspace(0, len(grid) - 1, min(count, len(grid))).round().astype(int))
    chosen = [grid[i] for i in order]
    mask_fn, skip_fn = _aoi_functions(job.plan)
    meta = job.meta
    out = []
    with WindowReader(_open_source(job), job.grid, job.work_region, job.plan.bands,
                      mask_fn=mask_fn, skip=skip_fn, windows=chosen,
                      name=os.fspath(job.scene)) as reader:
        for item in reader:
            if item.array is not None:
                out.append((to_tensor(item.array, meta.mean, meta.std, item.valid), item.valid))
    # Calibration windows first, then held-out ones taken from across the scene too.
    return out[0::2] + out[1::2]


def _spread(samples: list, limit: int) -> list:
    """At most ``limit`` of ``samples``, evenly spaced."""
    if len(samples) <= limit:
        return samples
    index = np.linspace(0, len(samples) - 1, limit).round().astype(int)
    return [samples[i] for i in index]
