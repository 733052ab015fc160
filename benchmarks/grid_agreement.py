"""Do two different window grids give the same mask? (issue 4's seam check, trained model)

Segments the same scene (or a square crop of it, ``--crop``) with a trained
model twice: with the model's window and a quarter-window overlap, and with
another window size and overlap (``--window``, ``--overlap``), then reports
the share of pixels where the two masks agree: over all pixels, and over
pixels at least ``--margin`` px away from a class boundary of the first mask
(where a class is decided with a margin, a grid must not change it). It also
reports agreement along the first grid's window borders, where seams would
show, and the model's own shift floor: how many interior pixels of one window
keep their class when the window moves by a few pixels (``--shifts``). No
blending can make two grids agree better than that, since each pixel's class
comes from windows placed differently in the two grids.

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


def away_from_boundaries(mask, margin: int):
    """Pixels of a class mask more than ``margin`` px (4-neighbour steps) from a class boundary.

    A boundary pixel is one with a 4-neighbour of another class (both sides of
    the boundary count).
    """
    import numpy as np

    boundary = np.zeros(mask.shape, bool)
    for axis in (0, 1):
        d = np.diff(mask.astype(np.int16), axis=axis) != 0
        if axis == 0:
            boundary[1:] |= d
            boundary[:-1] |= d
        else:
            boundary[:, 1:] |= d
            boundary[:, :-1] |= d
    return ~dilate(boundary, margin)


def shift_floor(scene, model_path, side: int, shifts, device: str, threads,
                other_size: int | None = None) -> dict[str, float]:
    """Agreement of windows with themselves moved or resized (interior pixels only).

    Whatever the blending, two grids cannot agree more than the model agrees
    with itself when its window moves by a few pixels (keys ``"1"``, ``"16"``...)
    or, for grids of another window size, when the window around the same
    centre is ``other_size`` px instead (key ``"size OTHER"``).
    """
    import rasterio
    import torch
    from rasterio.windows import Window

    from glnet.modelfile import load_model
    from glnet.nn.predict import predict_window
    from glnet.raster.tensors import to_tensor

    if threads:
        torch.set_num_threads(threads)
    model, meta = load_model(model_path, device=device)
    size = meta.net.window_size
    margin = size // 4
    room = side - size - max(shifts, default=0)
    # Windows at the centres of the crop's four quarters (one if the crop is small).
    corners = sorted({(max(0, min(room, r)), max(0, min(room, c)))
                      for r in (side // 4 - size // 2, 3 * side // 4 - size // 2)
                      for c in (side // 4 - size // 2, 3 * side // 4 - size // 2)})

    def classes(ds, top: int, left: int, n: int = size):
        window = Window(left, top, n, n)
        image = ds.read(window=window, boundless=True)
        valid = ds.read_masks(1, window=window, boundless=True) > 0
        x = to_tensor(image, meta.mean, meta.std, valid).to(device)
        with torch.no_grad():
            probs = predict_window(model, x, smooth_patches=True).probabilities
        return probs.argmax(0).cpu().numpy()

    same: dict[str, int] = {}
    count: dict[str, int] = {}

    def tally(key: str, a, b) -> None:
        same[key] = same.get(key, 0) + int((a == b).sum())
        count[key] = count.get(key, 0) + a.size

    with rasterio.open(scene) as ds:
        for top, left in corners:
            base = classes(ds, top, left)
            for s in shifts:
                moved = classes(ds, top + s, left + s)
                tally(str(s), base[margin + s:size - margin + s, margin + s:size - margin + s],
                      moved[margin:size - margin, margin:size - margin])
            if other_size and other_size != size:
                n = min(other_size, size)
                off = (size - other_size) // 2  # negative for a larger window
                other = classes(ds, top + off, left + off, other_size)
                inner = n // 4
                lo = max(off, 0) + inner  # the inner half of the smaller window, in base's frame
                a = base[lo:lo + n - 2 * inner, lo:lo + n - 2 * inner]
                b = other[lo - off:lo - off + n - 2 * inner, lo - off:lo - off + n - 2 * inner]
                tally(f"size {other_size}", a, b)
    return {k: same[k] / count[k] for k in same}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("--crop", type=int, default=3000, help="square crop side in px (0: all)")
    parser.add_argument("--window", type=int, default=1500)
    parser.add_argument("--overlap", type=int, default=300)
    parser.add_argument("--first-overlap", type=int, help="overlap of grid A (default: a quarter window)")
    parser.add_argument("--blend", type=int, help="blend width of both grids (default: segment's)")
    parser.add_argument("--margin", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--keep", type=Path, help="folder to keep the two masks in (a.tif, b.tif)")
    parser.add_argument("--shifts", default="1,16",
                        help="pixel shifts of one window for the model's own shift floor "
                             "('' to skip)")
    args = parser.parse_args(argv)

    import numpy as np
    import rasterio

    from glnet.config import SegmentOptions
    from glnet.modelfile import read_metadata
    from glnet.raster.windows import WindowGrid
    from glnet.segment.scene import segment

    meta = read_metadata(args.model)
    work = Path(tempfile.mkdtemp(prefix="glnet-grids-"))
    try:
        with rasterio.open(args.scene) as ds:
            side = min(ds.width, ds.height) if not args.crop else min(args.crop, ds.width,
                                                                        ds.height)
            t = ds.transform
            extent = (t.c, t.f + side * t.e, t.c + side * t.a, t.f)
        base = SegmentOptions(extent=extent, threads=args.threads, device=args.device,
                              overviews=False, style=False)
        if args.blend:
            base = base.replace(blend=args.blend)
        window = meta.net.window_size
        # Grid A is the grid segment used before its default overlap became the
        # blend width: a quarter window, unless --first-overlap says otherwise.
        first_overlap = args.first_overlap if args.first_overlap is not None else window // 4
        first = base.replace(overlap=first_overlap)
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
        away = valid & away_from_boundaries(a, args.margin)
        grid = WindowGrid.build(side, side, window, first_overlap,
                                min(args.blend or SegmentOptions().blend, max(first_overlap, 1)))
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
        print(f"\n{side} x {side} px; grid A: window {window} px, overlap {first_overlap} px; "
              f"grid B: window {args.window} px, overlap {args.overlap} px\n")
        print("| pixels | agree |\n|---|---|")
        print(f"| all valid | {100 * result['agree_all']:.3f} % |")
        print(f"| more than {args.margin} px from a class boundary "
              f"({100 * result['share_away']:.1f} % of them) | "
              f"{100 * result['agree_away_from_boundaries']:.3f} % |")
        print(f"| in grid A's blend zones (+-8 px) | {100 * result['agree_in_blend_zones']:.3f} % |")
        shifts = [int(v) for v in args.shifts.split(",") if v.strip()]
        if shifts:
            floor = shift_floor(args.scene, args.model, side, shifts, args.device, args.threads,
                                args.window)
            result["shift_floor"] = floor
            print("\nThe model's own floor: windows at the centres of the crop's quarters "
                  "predicted again, moved diagonally by s px or resized around the same centre; "
                  "share of the interior (a quarter window from each edge) that keeps its "
                  "class\n")
            print("| window change | agree |\n|---|---|")
            for key, agree in floor.items():
                label = f"{key} px" if key.isdigit() else key + " px"
                print(f"| {'moved ' if key.isdigit() else ''}{label} | {100 * agree:.3f} % |")
            print(json.dumps({"shift_floor": floor}))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("a.tif", "b.tif"):
                shutil.copy(work / name, args.keep / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
