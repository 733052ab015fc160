"""Dask distributed benchmark: one scene on 1 and 2 single-thread workers vs one process.

In one run of this script, on the same generated scene (streamed to disk,
deleted afterwards) and the same model (the chosen preset, random weights:
speed does not depend on them):

* ``single``: ``glnet.segment.scene.segment`` in a child process with ``--threads``
  torch threads (default 2): the baseline;
* ``dask 1x1`` and ``dask 2x1``: ``glnet.segment.distributed.segment_scenes`` on a
  LocalCluster of 1 and 2 worker processes with one thread each.

Each row gives wall time, megapixels per second and the ratio to the
baseline, the number of strips and the windows computed (a cut between strips
costs one extra row of windows), and whether the mask equals the baseline's
(only expected where the torch thread count is the same; with 2 threads
against 1 the last float bit may differ and flip near-tie pixels, so the share
of equal pixels is printed). Cluster start-up is not counted; the model
loading on the workers is (it happens once per worker when the job starts).

Usage:
    python benchmarks/distributed_scale.py                  # 36 MP, fast preset
    python benchmarks/distributed_scale.py --megapixels 16 --json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scene_scale import generate_scene, run_child  # noqa: E402

SINGLE = r"""
import json, sys, time
import torch
from glnet.config import SegmentOptions
from glnet.segment.scene import segment
a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
t = time.perf_counter()
res = segment(a["scene"], a["model"], a["output"],
              SegmentOptions(threads=a["threads"], overwrite=True, style=False))
print(json.dumps({"seconds": time.perf_counter() - t, "windows": res.windows}))
"""


def run_dask(scene: Path, model: Path, output: Path, workers: int) -> dict:
    from glnet.config import SegmentOptions
    from glnet.modelfile import read_metadata
    from glnet.segment.distributed import connect, plan_strips, segment_scenes, strip_overhead
    from glnet.segment.plan import plan_job

    opts = SegmentOptions(threads=1, overwrite=True, style=False)
    job = plan_job(scene, read_metadata(model), output, opts, model)
    cut = plan_strips([job], workers)[0]
    with connect(f"local:{workers}", threads_per_worker=1) as client:
        client.wait_for_workers(workers)
        t = time.perf_counter()
        segment_scenes([scene], model, [output], opts, client)
        seconds = time.perf_counter() - t
    rows = sum(s.last - s.first + 1 for s in cut)
    return {"seconds": seconds, "strips": len(cut),
            "windows": rows * len(job.grid.cols), "overhead": strip_overhead(job, cut)}


def equal_share(a: Path, b: Path) -> float:
    import numpy as np
    import rasterio

    same = total = 0
    with rasterio.open(a) as da, rasterio.open(b) as db:
        for _, win in da.block_windows(1):
            x, y = da.read(1, window=win), db.read(1, window=win)
            same += int(np.count_nonzero(x == y))
            total += x.size
    return same / total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=36.0)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--threads", type=int, default=2, help="threads of the single process")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from glnet.config import preset
    from glnet.modelfile import ClassInfo, ModelMeta, save_model
    from glnet.nn.glnet import GLNet

    side = int(math.sqrt(args.megapixels * 1e6))
    work = Path(tempfile.mkdtemp(prefix="glnet-dist-bench-"))
    try:
        scene, model = work / "scene.tif", work / "model.glnet"
        generate_scene(scene, side)
        torch.manual_seed(0)
        cfg = preset(args.preset, num_classes=3)
        meta = ModelMeta(net=cfg, classes=tuple(ClassInfo(i, f"class {i}", (80 * i, 90, 60))
                                                for i in range(3)),
                         bands=("red", "green", "blue"), mean=(100.0,) * 3, std=(50.0,) * 3,
                         stages=(1, 2, 3), preset=args.preset)
        net = GLNet(cfg)
        net.add_context_branch()
        save_model(net.eval(), meta, model)
        rows = []
        single = run_child(SINGLE, {"scene": str(scene), "model": str(model),
                                    "output": str(work / "single.tif"), "threads": args.threads})
        rows.append({"run": f"single process, {args.threads} threads", "strips": 1,
                     "windows": single["windows"], **single})
        for n in (1, 2):
            out = work / f"dask{n}.tif"
            r = run_dask(scene, model, out, n)
            r["equal"] = equal_share(work / "single.tif", out)
            rows.append({"run": f"dask, {n} worker(s) x 1 thread", **r})
        base = rows[0]["seconds"]
        mp = side * side / 1e6
        if args.json:
            print(json.dumps({"megapixels": mp, "rows": rows}, indent=2))
        print(f"\n{mp:.1f} MP scene ({side} x {side} px), {args.preset} preset, "
              f"`python benchmarks/distributed_scale.py --megapixels {args.megapixels:g}`\n")
        print("| run | strips | windows computed | time | MP/s | vs single process "
              "| pixels equal to single |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            eq = f"{100 * r['equal']:.3f} %" if "equal" in r else "-"
            print(f"| {r['run']} | {r['strips']} | {r['windows']} | {r['seconds']:.1f} s | "
                  f"{mp / r['seconds']:.3f} | {base / r['seconds']:.2f}x | {eq} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
