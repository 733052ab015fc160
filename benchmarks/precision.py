"""bf16 against fp32 inference with trained models: speed ratio and class agreement (issue 17).

For each model, ``glnet segment`` runs on the same square part of the scene
(``--crop`` px from ``--offset``, through ``SegmentOptions.extent``) with
``precision="fp32"`` and ``precision="bf16"``, alternating, in the same
process, and the script reports, in the same run:

* speed: fp32 median wall time / bf16 median wall time of the whole
  ``segment`` call (reading, model, blending, writing the COG without
  overviews), and the same ratio of the time spent in the model alone
  (``SegmentResult.model_seconds``); above 1 means bf16 is faster;
* agreement: the share of valid pixels whose class differs between the fp32
  and the bf16 mask, over all pixels, and over pixels more than ``--margin`` px
  from a class boundary of the fp32 mask (where a class is decided with some
  room, reduced precision should not change it); with ``--labels``, each
  mask's accuracy against the reference raster too.

Budget: the work is counted in windows (``windows`` column): each round runs
every model's windows twice (fp32 and bf16), after ``--warmup`` untimed rounds.
A 2000 px crop is 4 windows of 1880 px; a stage-1 model runs its global branch
only (mode 1, seconds per run), a stage-3 one the full network (mode 3, many
patches per window: budget minutes).

Usage (smoke run; time ratios only mean something on an idle machine)::

    python benchmarks/precision.py /tmp/exp/d8k/scene.tif /tmp/demo_a/model.glnet \\
        --labels /tmp/exp/d8k/labels.tif --crop 2000 --repeats 1 --warmup 0
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

PRECISIONS = ("fp32", "bf16")


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


def measure(scene: Path, model: Path, args: argparse.Namespace, work: Path) -> dict:
    """Timed fp32 and bf16 runs of one model; their masks compared."""
    import rasterio

    from glnet.config import SegmentOptions
    from glnet.modelfile import read_metadata
    from glnet.segment.scene import segment

    meta = read_metadata(model)
    extent = crop_extent(scene, args.crop, args.offset)
    base = SegmentOptions(extent=extent, threads=args.threads, device=args.device,
                          overviews=False, style=False, overwrite=True)
    wall = {p: [] for p in PRECISIONS}
    model_s = {p: [] for p in PRECISIONS}
    busy = {p: [] for p in PRECISIONS}
    results = {}
    for r in range(args.warmup + args.repeats):
        timed = r >= args.warmup
        # Alternate the order so that a slow spell of the machine hits both alike.
        for precision in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            cpu0, t0 = time.process_time(), time.perf_counter()
            res = segment(scene, model, work / f"{precision}.tif",
                          base.replace(precision=precision))
            seconds = time.perf_counter() - t0
            results[precision] = res
            log(f"[{model.name}] {'round' if timed else 'warm-up'} {r + 1}: {precision} "
                f"{seconds:.1f} s ({res.windows} windows, model {res.model_seconds:.1f} s)")
            if timed:
                wall[precision].append(seconds)
                model_s[precision].append(res.model_seconds)
                busy[precision].append((time.process_time() - cpu0) / seconds)
    masks = {}
    for precision in PRECISIONS:
        with rasterio.open(work / f"{precision}.tif") as ds:
            masks[precision] = ds.read(1)
    a, b = masks["fp32"], masks["bf16"]
    valid = (a != 255) & (b != 255)
    differ = (a != b) & valid
    away = valid & away_from_boundaries(a, args.margin)
    out = {
        "model": str(model), "preset": meta.preset, "stages": meta.stages,
        "windows": results["fp32"].windows, "side": a.shape,
        "wall": {p: statistics.median(v) for p, v in wall.items()},
        "model_s": {p: statistics.median(v) for p, v in model_s.items()},
        "busy": min(statistics.median(v) for v in busy.values()),
        "differ_all": float(differ.sum() / max(valid.sum(), 1)),
        "differ_away": float((differ & away).sum() / max(away.sum(), 1)),
        "share_away": float(away.sum() / max(valid.sum(), 1)),
    }
    if args.labels is not None:
        truth = read_labels(args.labels, work / "fp32.tif")
        known = valid & (truth != 255)
        out["accuracy"] = {p: float(((m == truth) & known).sum() / max(known.sum(), 1))
                           for p, m in masks.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("models", type=Path, nargs="+", help="trained model files")
    parser.add_argument("--labels", type=Path, help="reference class raster (accuracy column)")
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
    print(f"torch {torch.__version__}, {args.threads} threads, CPU: {cpu_model()}; "
          f"auto here: {auto.name}")
    print()
    print(f"| model | preset, stages | windows | fp32 s | bf16 s | speed bf16/fp32 (segment) "
          f"| (model only) | pixels differing | beyond {args.margin} px of a boundary "
          f"| accuracy fp32 / bf16 | cores busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = r.get("accuracy")
        accuracy = f"{100 * acc['fp32']:.2f} / {100 * acc['bf16']:.2f} %" if acc else "-"
        print(f"| {Path(r['model']).name} | {r['preset']}, {','.join(map(str, r['stages']))} "
              f"| {r['windows']} | {r['wall']['fp32']:.1f} | {r['wall']['bf16']:.1f} "
              f"| {r['wall']['fp32'] / r['wall']['bf16']:.2f}x "
              f"| {r['model_s']['fp32'] / max(r['model_s']['bf16'], 1e-9):.2f}x "
              f"| {100 * r['differ_all']:.3f} % | {100 * r['differ_away']:.3f} % "
              f"({100 * r['share_away']:.0f} % of pixels) "
              f"| {accuracy} "
              f"| {r['busy']:.1f} |")
    print()
    print(f"- {args.scene}: {args.crop} px square from pixel {tuple(args.offset)}; median of "
          f"{args.repeats} timed round(s) after {args.warmup} warm-up round(s), fp32 and bf16 "
          "alternating; `segment` without overviews; speed ratio = fp32 time / bf16 time.")
    print("- pixels differing: valid pixels whose class differs between the fp32 and bf16 "
          f"masks; 'beyond {args.margin} px': of the pixels more than {args.margin} px from a "
          "class boundary of the fp32 mask.")
    if min(r["busy"] for r in rows) < 0.9 * args.threads:
        print(f"- WARNING: cores busy fell below {0.9 * args.threads:.1f}: the CPU was shared "
              "during this run, so the speed ratios are noisy; rerun on an idle machine.")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
