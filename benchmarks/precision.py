"""Precisions and backends against each other with trained models: speed and class agreement (issue 17).

For each model, ``glnet segment`` runs on the same square part of the scene
(``--crop`` px from ``--offset``, through ``SegmentOptions.extent``) once per
``--runs`` entry (``BACKEND:PRECISION``; default ``torch:fp32,torch:bf16``, the
first the reference), alternating, in the same process, and the script
reports, in the same run:

* speed: the reference's median wall time / the run's median wall time of the whole
  ``segment`` call (reading, model, blending, writing the COG without
  overviews), and the same ratio of the time spent in the model alone
  (``SegmentResult.model_seconds``); above 1 means the run is faster;
* agreement: the share of valid pixels whose class differs between the
  reference's mask and the run's, over all pixels, and over pixels more than
  ``--margin`` px from a class boundary of the reference mask (where a class is decided with some
  room, reduced precision should not change it); with ``--labels``, each
  mask's accuracy against the reference raster too.

Budget: the work is counted in windows (``windows`` column): each round runs
every model's windows once per run, after ``--warmup`` untimed rounds.
A 2000 px crop is 4 windows of 1880 px; a stage-1 model runs its global branch
only (mode 1, seconds per run), a stage-3 one the full network (mode 3, many
patches per window: budget minutes).

Usage (smoke run; time ratios only mean something on an idle machine)::

    python benchmarks/precision.py /tmp/exp/d8k/scene.tif /tmp/demo_a/model.glnet \\
        --labels /tmp/exp/d8k/labels.tif --crop 2000 --repeats 1 --warmup 0
    python benchmarks/precision.py demo_output/scene/scene.tif demo_output/model.glnet \
        --runs torch:fp32,openvino:fp32,openvino:int8 --crop 1500   # after glnet quantize
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from grid_agreement import away_from_boundaries
from model_speed import cpu_model


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def crop_extent(scene: Path, crop: int, offset: tuple[int, int]):
    """``(xmin, ymin, xmax, ymax)`` of the ``crop`` px square at pixel ``offset`` (row, col)."""
    import rasterio

    with rasterio.open(scene) as ds:
        row = min(offset[0], max(ds.height - crop, 0))
        col = min(offset[1], max(ds.width - crop, 0))
        h, w = min(crop, ds.height - row), min(crop, ds.width - col)
        t = ds.transform
        x0, y0 = t * (col, row)
        x1, y1 = t * (col + w, row + h)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def read_labels(labels: Path, like: Path):
    """The reference raster warped (nearest) onto the grid of the mask ``like``."""
    import numpy as np
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(like) as ref, rasterio.open(labels) as src:
        out = np.full((ref.height, ref.width), 255, np.uint8)
        reproject(rasterio.band(src, 1), out, dst_transform=ref.transform, dst_crs=ref.crs,
                  dst_nodata=255, resampling=Resampling.nearest)
    return out


def parse_runs(text: str) -> list[tuple[str, str]]:
    """``torch:fp32,openvino:int8`` -> [("torch", "fp32"), ("openvino", "int8")]."""
    runs = []
    for item in text.split(","):
        backend, _, precision = item.strip().partition(":")
        if backend not in ("torch", "openvino") or precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"run {item!r}: give BACKEND:PRECISION, BACKEND torch or openvino, "
                             "PRECISION fp32, bf16 or int8")
        runs.append((backend, precision))
    if len(runs) < 2 or len(set(runs)) != len(runs):
        raise ValueError("give two or more different runs, the reference first")
    return runs


def run_name(run: tuple[str, str]) -> str:
    return f"{run[0]}:{run[1]}"


def measure(scene: Path, model: Path, args: argparse.Namespace, work: Path) -> dict:
    """Timed runs of one model, alternating; each mask compared with the reference run's."""
    import rasterio

    from glnet.config import SegmentOptions
    from glnet.modelfile import read_metadata
    from glnet.segment.scene import segment

    meta = read_metadata(model)
    extent = crop_extent(scene, args.crop, args.offset)
    base = SegmentOptions(extent=extent, threads=args.threads, device=args.device,
                          overviews=False, style=False, overwrite=True)
    runs = args.runs
    names = [run_name(r) for r in runs]
    wall = {n: [] for n in names}
    model_s = {n: [] for n in names}
    busy = {n: [] for n in names}
    results = {}
    for r in range(args.warmup + args.repeats):
        timed = r >= args.warmup
        # Alternate the order so that a slow spell of the machine hits all alike.
        for (backend, precision), name in (zip(runs, names) if r % 2 == 0
                                           else list(zip(runs, names))[::-1]):
            cpu0, t0 = time.process_time(), time.perf_counter()
            res = segment(scene, model, work / f"{backend}-{precision}.tif",
                          base.replace(precision=precision, backend=backend))
            seconds = time.perf_counter() - t0
            results[name] = res
            log(f"[{model.name}] {'round' if timed else 'warm-up'} {r + 1}: {name} "
                f"{seconds:.1f} s ({res.windows} windows, model {res.model_seconds:.1f} s)")
            if timed:
                wall[name].append(seconds)
                model_s[name].append(res.model_seconds)
                busy[name].append((time.process_time() - cpu0) / seconds)
    masks = {}
    for (backend, precision), name in zip(runs, names):
        with rasterio.open(work / f"{backend}-{precision}.tif") as ds:
            masks[name] = ds.read(1)
    ref = masks[names[0]]
    away_ref = away_from_boundaries(ref, args.margin)
    compared = {}
    for name in names[1:]:
        other = masks[name]
        valid = (ref != 255) & (other != 255)
        differ = (ref != other) & valid
        away = valid & away_ref
        compared[name] = {"differ_all": float(differ.sum() / max(valid.sum(), 1)),
                          "differ_away": float((differ & away).sum() / max(away.sum(), 1)),
                          "share_away": float(away.sum() / max(valid.sum(), 1))}
    out = {
        "model": str(model), "preset": meta.preset, "stages": meta.stages,
        "windows": results[names[0]].windows, "side": ref.shape,
        "wall": {n: statistics.median(v) for n, v in wall.items()},
        "model_s": {n: statistics.median(v) for n, v in model_s.items()},
        "busy": min(statistics.median(v) for v in busy.values()),
        "compared": compared,
    }
    if args.labels is not None:
        truth = read_labels(args.labels, work / f"{runs[0][0]}-{runs[0][1]}.tif")
        out["accuracy"] = {}
        for n, m in masks.items():
            known = (m != 255) & (truth != 255)
            out["accuracy"][n] = float(((m == truth) & known).sum() / max(known.sum(), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help="trained model files")
    parser.add_argument("--labels", type=Path, help="reference class raster (accuracy column)")
    parser.add_argument("--runs", default="torch:fp32,torch:bf16",
                        help="BACKEND:PRECISION runs, the reference first (default "
                             "torch:fp32,torch:bf16; e.g. torch:fp32,openvino:fp32,openvino:int8, "
                             "int8 after glnet quantize)")
    parser.add_argument("--crop", type=int, default=2000, help="square side in px (default 2000)")
    parser.add_argument("--offset", type=int, nargs=2, default=(0, 0), metavar=("ROW", "COL"),
                        help="top-left pixel of the crop (default 0 0)")
    parser.add_argument("--margin", type=int, default=3,
                        help="px from a class boundary beyond which pixels count as 'away' "
                             "(default 3)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.crop < 1:
        parser.error("--repeats and --crop must be at least 1, --warmup at least 0")
    try:
        args.runs = parse_runs(args.runs)
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    from glnet.nn.precision import resolve_precision

    started = time.perf_counter()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="glnet-precision-"))
    try:
        for model in args.models:
            rows.append(measure(args.scene, model, args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    auto = resolve_precision("auto", args.device)
    ref = run_name(args.runs[0])
    print(f"torch {torch.__version__}, {args.threads} threads, CPU: {cpu_model()}; "
          f"auto here: {auto.name}; reference {ref}")
    print()
    print(f"| model | preset, stages | windows | run | s | speed vs {ref} (segment) "
          f"| (model only) | pixels differing | beyond {args.margin} px of a boundary "
          f"| accuracy | cores busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = r.get("accuracy")
        for name in r["wall"]:
            c = r["compared"].get(name)
            differ = (f"{100 * c['differ_all']:.3f} % | {100 * c['differ_away']:.3f} % "
                      f"({100 * c['share_away']:.0f} % of pixels)") if c else "- | -"
            print(f"| {Path(r['model']).name} | {r['preset']}, "
                  f"{','.join(map(str, r['stages']))} | {r['windows']} | {name} "
                  f"| {r['wall'][name]:.1f} | {r['wall'][ref] / r['wall'][name]:.2f}x "
                  f"| {r['model_s'][ref] / max(r['model_s'][name], 1e-9):.2f}x | {differ} "
                  f"| {f'{100 * acc[name]:.2f} %' if acc else '-'} | {r['busy']:.1f} |")
    print()
    print(f"- {args.scene}: {args.crop} px square from pixel {tuple(args.offset)}; median of "
          f"{args.repeats} timed round(s) after {args.warmup} warm-up round(s), the runs "
          f"alternating; `segment` without overviews; speed = {ref} time / the run's time.")
    print(f"- pixels differing: valid pixels whose class differs from the {ref} mask; 'beyond "
          f"{args.margin} px': of the pixels more than {args.margin} px from a class boundary "
          f"of the {ref} mask.")
    if min(r["busy"] for r in rows) < 0.9 * args.threads:
        print(f"- WARNING: cores busy fell below {0.9 * args.threads:.1f}: the CPU was shared "
              "during this run, so the speed ratios are noisy; rerun on an idle machine.")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
