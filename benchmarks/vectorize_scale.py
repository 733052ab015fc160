"""Vectorizing a large land-cover mask: glnet vectorize against gdal_polygonize.

Generates a SIZE x SIZE uint8 mask with a land-cover-like structure (five
classes from smooth random fields at four scales, so regions of all sizes
with ragged borders and speckle; a sixth class of 3-5 px roads; a nodata
corner), written strip by strip so that no whole-mask array is ever held.
Then runs, each in a child process of its own, on the same mask:

* ``gdal_polygonize.py`` (system GDAL, 4-connected, to a GeoPackage);
* ``glnet vectorize`` with the default strips, exact (no sieve, no simplify);
* the same reading the whole mask at once (``--block-size 0``);
* ``glnet vectorize --min-pixels 16 --simplify 2`` (the usual way to run it).

and prints a Markdown table of wall time, peak resident memory (the child's
``ru_maxrss`` from ``wait4``) and polygon count. The generated files are
deleted at the end (``--keep`` keeps them).

    .venv/bin/python benchmarks/vectorize_scale.py              # 10,000 x 10,000 (100 MP)
    .venv/bin/python benchmarks/vectorize_scale.py --size 3000  # a quick run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from glnet.contract import CLASSES_TAG, NODATA, ClassInfo, classes_json

GDAL_POLYGONIZE = "/usr/bin/gdal_polygonize.py"
ROAD = 5
# (grid spacing in pixels, weight) of the random fields' scales
SCALES = ((1024, 1.0), (256, 0.6), (64, 0.45), (16, 0.3), (4, 0.12))


def _field_rows(grid: np.ndarray, spacing: int, r0: int, r1: int, width: int) -> np.ndarray:
    """Bilinear interpolation of a coarse random grid on rows r0..r1 (float32)."""
    y = (np.arange(r0, r1, dtype=np.float64) + 0.5) / spacing
    x = (np.arange(width, dtype=np.float64) + 0.5) / spacing
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    ty, tx = (y - iy).astype(np.float32)[:, None], (x - ix).astype(np.float32)
    rows = grid[iy[0]:iy[-1] + 2]
    along = rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx
    j = iy - iy[0]
    return along[j] * (1 - ty) + along[j + 1] * ty


def generate_mask(path: Path, size: int, seed: int = 0, strip: int = 512) -> dict[int, int]:
    """Write a ``size`` x ``size`` land-cover-like mask to ``path``; return pixel counts per value."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    n_land = 5
    grids = [[rng.standard_normal((size // s + 3, size // s + 3)).astype(np.float32) * w
              for s, w in SCALES] for _ in range(n_land)]
    # roads: straight lines a x + b y = c with unit normal (a, b), 3 to 5 px wide
    n_roads = max(4, size // 400)
    angles = rng.uniform(0, np.pi, n_roads)
    normals = np.stack([np.cos(angles), np.sin(angles)], 1)
    offsets = (normals * rng.uniform(0, size, (n_roads, 2))).sum(1)
    widths = rng.uniform(3, 5, n_roads)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                   nodata=NODATA, crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 5000000),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate", zlevel=1,
                   bigtiff="IF_SAFER")
    counts = np.zeros(256, np.int64)
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            r1 = min(size, r0 + strip)
            best = np.full((r1 - r0, size), -np.inf, np.float32)
            label = np.zeros((r1 - r0, size), np.uint8)
            for k in range(n_land):
                value = sum(_field_rows(g, s, r0, r1, size) for g, (s, _) in zip(grids[k], SCALES))
                better = value > best
                best[better] = value[better]
                label[better] = k
            del best
            for (a, b), c, w in zip(normals, offsets, widths):
                for i, y in enumerate(range(r0, r1)):
                    if abs(a) < 1e-9:
                        if abs(b * y - c) < w / 2:
                            label[i] = ROAD
                        continue
                    lo, hi = sorted(((c - b * y - w / 2) / a, (c - b * y + w / 2) / a))
                    label[i, max(0, int(np.ceil(lo))):max(0, int(np.floor(hi)) + 1)] = ROAD
            # a nodata corner, as a rotated scene's footprint leaves
            rows = np.arange(r0, r1)[:, None]
            label[cols[None, :] + rows < size // 8] = NODATA
            counts += np.bincount(label.ravel(), minlength=256)
            dst.write(label, 1, window=Window(0, r0, size, r1 - r0))
        classes = ["water", "forest", "grassland", "cropland", "built-up", "road"]
        colors = [(31, 120, 180), (51, 160, 44), (178, 223, 138), (255, 255, 153),
                  (227, 26, 28), (64, 64, 64)]
        dst.update_tags(**{CLASSES_TAG: classes_json(
            ClassInfo(i, n, c) for i, (n, c) in enumerate(zip(classes, colors)))})
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colors)})
    return {v: int(n) for v, n in enumerate(counts) if n}


def measure(cmd: list[str]) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in MiB, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def count_features(path: Path) -> int:
    import fiona

    with fiona.open(path) as layer:
        return len(layer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000, help="mask side in pixels (10000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--skip-whole", action="store_true", help="skip --block-size 0")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vectorize-bench-", dir=args.dir))
    glnet = [str(Path(sys.executable).with_name("glnet")), "--progress", "none", "vectorize"]
    try:
        mask = work / "mask.tif"
        t0 = time.perf_counter()
        counts = generate_mask(mask, args.size, args.seed)
        gen = time.perf_counter() - t0
        mp = args.size * args.size / 1e6
        print(f"mask: {args.size} x {args.size} ({mp:.0f} MP), {len(counts) - (NODATA in counts)} "
              f"classes + nodata, generated in {gen:.0f} s; {os.cpu_count()} CPU cores\n")
        runs = [("gdal_polygonize.py (GDAL 3.6, GPKG)", "exact",
                 ["/usr/bin/python3", GDAL_POLYGONIZE, "-q", str(mask), "-f", "GPKG",
                  str(work / "gdal.gpkg"), "polygons", "DN"], work / "gdal.gpkg"),
                ("glnet vectorize, strips (default)", "exact",
                 [*glnet, str(mask), "-o", str(work / "strips.gpkg")], work / "strips.gpkg")]
        if not args.skip_whole:
            runs.append(("glnet vectorize --block-size 0 (whole mask)", "exact",
                         [*glnet, str(mask), "-o", str(work / "whole.gpkg"), "--block-size", "0"],
                         work / "whole.gpkg"))
        runs.append(("glnet vectorize, strips (default)", "--min-pixels 16 --simplify 2",
                     [*glnet, str(mask), "-o", str(work / "simple.gpkg"), "--min-pixels", "16",
                      "--simplify", "2"], work / "simple.gpkg"))
        rows = []
        for name, settings, cmd, out in runs:
            wall, rss, rc = measure(cmd)
            n = count_features(out) if rc == 0 and out.exists() else "failed"
            rows.append((name, settings, n, wall, rss))
            print(f"  {name} {settings}: {wall:.1f} s, {rss:.0f} MiB, {n} polygons",
                  file=sys.stderr, flush=True)
        print("| tool | settings | polygons | wall time (s) | peak RSS (MiB) |")
        print("|---|---|---:|---:|---:|")
        for name, settings, n, wall, rss in rows:
            print(f"| {name} | {settings} | {n:,} | {wall:.1f} | {rss:.0f} |"
                  if isinstance(n, int) else f"| {name} | {settings} | {n} | {wall:.1f} | {rss:.0f} |")
    finally:
        if args.keep:
            print(f"\nfiles kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
