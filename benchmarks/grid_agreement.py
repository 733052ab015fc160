"""Do two different window grids give the same mask? (issue 4's seam check, trained model)

Segments the same scene (or a square crop of it, ``--crop``) with a trained
model twice: with the model's window and a quarter-window overlap, and with
another window size and overlap (``--window``, ``--overlap``), then reports
the share of pixels where the two masks agree: over all pixels, and over
pixels at least ``--margin`` px away from a class boundary of the first mask
(where a class is decided with a margin, a grid must not change it). It also
reports agreement along the first grid's window borders, where seams would
show.

Usage:
    python benchmarks/grid_agreement.py demo_output/scene/scene.tif demo_output/model.glnet \
        --crop 3000 --window 1500 --overlap 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def dilate(mask, steps: int):
    """4-neighbour binary dilation, ``steps`` times (numpy only)."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--crop", type=int, default=3000, help="square crop side in px (0: all)")
    parser.add_argument("--window", type=int, default=1500)
    parser.add_argument("--overlap", type=int, default=300)
    parser.add_argument("--margin", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import rasterio

    from glnet.modelfile import read_metadata
    from glnet.segment import SegmentOptions, segment
    from glnet.windows import WindowGrid

    meta = read_metadata(args.model)
    work = Path(tempfile.mkdtemp(prefix="glnet-grids-"))
    try:
        with rasterio.open(args.scene) as ds:
            side = min(ds.width, ds.height) if not args.crop else min(args.crop, ds.width,
                                                                        ds.height)
            t = ds.transform
            extent = (t.c, t.f + side * t.e, t.c + side * t.a, t.f)
        base = SegmentOptions(extent=extent, threads=args.threads, overviews=False, style=False)
        first = base
        second = base.replace(window_size=args.window, overlap=args.overlap)
        masks = []
        for name, opts in (("a", first), ("b", second)):
            out = work / f"{name}.tif"
            segment(args.scene, args.model, out, opts)
            with rasterio.open(out) as ds:
                masks.append(ds.read(1))
        a, b = masks
        valid = (a != 255) & (b != 255)
        same = (a == b) & valid
        boundary = np.zeros_like(valid)
        for axis in (0, 1):
            d = np.diff(a.astype(np.int16), axis=axis) != 0
            if axis == 0:
                boundary[1:] |= d
                boundary[:-1] |= d
            else:
                boundary[:, 1:] |= d
                boundary[:, :-1] |= d
        near = dilate(boundary, args.margin)
        away = valid & ~near
        window = meta.net.window_size
        grid = WindowGrid.build(side, side, window, window // 4, min(128, window // 4))
        seams = np.zeros_like(valid)
        for plan, axis in ((grid.rows, 0), (grid.cols, 1)):
            for start, width in plan.ramps:
                lo, hi = max(start - 8, 0), min(start + width + 8, side)
                if axis == 0:
                    seams[lo:hi] = True
                else:
                    seams[:, lo:hi] = True
        seams &= valid
        result = {
            "scene": str(args.scene), "side": side, "model_window": window,
            "other_window": args.window, "other_overlap": args.overlap,
            "agree_all": float(same.sum() / max(valid.sum(), 1)),
            "agree_away_from_boundaries": float((same & away).sum() / max(away.sum(), 1)),
            "share_away": float(away.sum() / max(valid.sum(), 1)),
            "agree_in_blend_zones": float((same & seams).sum() / max(seams.sum(), 1)),
        }
        print(json.dumps(result, indent=2))
        print(f"\n{side} x {side} px; grid A: window {window} px, overlap {window // 4} px; "
              f"grid B: window {args.window} px, overlap {args.overlap} px\n")
        print("| pixels | agree |\n|---|---|")
        print(f"| all valid | {100 * result['agree_all']:.3f} % |")
        print(f"| more than {args.margin} px from a class boundary "
              f"({100 * result['share_away']:.1f} % of them) | "
              f"{100 * result['agree_away_from_boundaries']:.3f} % |")
        print(f"| in grid A's blend zones (+-8 px) | {100 * result['agree_in_blend_zones']:.3f} % |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
