"""Accuracy of GLNet against its own two branches trained alone, with the same budget.

Run from the repository root::

    .venv/bin/python benchmarks/accuracy.py                 # full run (hours on 2 cores)
    .venv/bin/python benchmarks/accuracy.py --quick         # smoke run, a few minutes

It prints Markdown tables (for the README) on stdout, progress on stderr, and
writes everything as JSON (``--json``, default ``WORKDIR/accuracy.json``).

Methods
-------
All three are one preset's network (``--preset``, default ``lite``: EfficientNet-Lite0
trunks from ImageNet weights, FPN 64 / 16, 1x1 fusion), trained with
``glnet.train.training.train`` (Adam, poly schedule over each stage, focal loss, flips
and rotations) with the training defaults (every stage at 1e-4, decoders at 10x
with pretrained trunks, no weak coupling with pretrained trunks; pretrained trunks keep their
BatchNorm statistics; ``--lr``, ``--decoder-lr-factor`` and ``--coupling-weight`` override), seeded, without validation (the whole training area is used for
training and the model after the last step is scored), once per seed of
``--seeds``; tables give the mean and the spread (half the range) over seeds.
``--preset fast`` runs the ResNet-18 network from scratch (the first round's
benchmark).

GLNet
    the three stages, 100 + 700 + 100 optimiser steps (``--glnet-split``); context
    window ``--window`` (416 px) seen by the global branch at ``--global-size``
    (128 px, 3.25x downsampled), local patches of ``--patch`` (128 px, a 4 x 4
    grid over the window), 4 random patches per window carrying the loss in
    stages 2 and 3 (``patches_per_window``). Scored in mode 3.
global only
    stage 1 alone on the same windows: the global branch on the downsampled
    window. Scored in mode 1.
local only
    the same network with window = global size = patch size (128 px): its
    "global" branch sees full-resolution patch-sized windows, i.e. a plain
    single-branch FPN of the same trunk on 128 px tiles. Trained as stage 1, 4 windows per step
    (as many full-resolution patches as a GLNet stage-2/3 step has a loss on).
    Scored in mode 1.

Budget
------
``--steps`` optimiser steps per method (default 900), independent of machine
load: GLNet 100 + 700 + 100 (``--glnet-split``: other shares; the local branch, which only
stage 2 trains, needs the most), the baselines 900 each. A step sees one context
window (GLNet stage 1, global only), one context window with 4 patches
carrying the loss (GLNet stages 2 and 3; all 16 patches run forward in stage
3), or 4 patch-sized windows (local only). The geometry is the ``fast``
preset's (1880 / 512 / 512: 4 x 4 patches, 3.7x downsampling) scaled down
4.5x, so that this many steps fit a CPU; the synthetic landscape is scaled
down the same way (feature size 200 px instead of 900).

Data and scoring
----------------
synthetic
    ``glnet synth`` scenes of ``--synth-size`` px (2048), feature size 200 px:
    trained on seed 0, scored on seed 1 (an independent landscape).
LoveDA
    the three 1024 px tiles in ``shared/data/real/loveda``, spatial hold-out:
    trained on the left three quarters (columns 0-767) of each tile, scored on
    the right quarter. Whole tiles are segmented (the image left of the
    hold-out is context, as it would be in use), labels count only in the
    hold-out: the scoring folder's annotations are LoveDA's with columns
    0-767 set to 0 (no data).
Dubai
    the 63 aerial tiles of ``shared/data/real/dubai-aerial`` (6 classes),
    split by area: trained on the images of tiles 1-5, scored on those of
    tiles 6 and 7 (``--dubai-split``), so no test pixel lies in any training
    image.

Scores come from ``glnet.evaluate.model.evaluate_model`` / ``evaluate_model_on_dataset``
(what ``glnet evaluate -m`` runs): the scene is segmented by ``glnet.segment.scene``
(windows overlapping by a quarter, smooth blending) into a mask, and the
project's confusion matrix gives per-class IoU and mIoU (the mean over classes
present in the reference or the prediction; a class predicted but absent from
the reference scores 0 and counts).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOVEDA = ROOT.parent / "shared" / "data" / "real" / "loveda"
DUBAI = ROOT.parent / "shared" / "data" / "real" / "dubai-aerial"
METHODS = ("GLNet", "global only", "local only")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def synth_data(work: Path, size: int, feature: float, seeds: tuple[int, int]) -> dict:
    from glnet.synth import synth

    out = {}
    for role, seed in zip(("train", "test"), seeds):
        folder = work / f"synth-{size}-{feature:g}-{seed}"
        if not (folder / "labels.tif").exists():
            synth(folder, size=size, seed=seed, feature_size=feature, overwrite=True)
        out[role] = folder
    return out


def loveda_data(work: Path, source: Path, holdout: float) -> dict:
    """A training folder (left part of each tile) and a scoring folder (whole tiles,
    annotations only in the right-hand hold-out)."""
    import rasterio

    train, test = work / "loveda-train", work / "loveda-test"
    for folder in (train, test):
        if folder.exists():
            shutil.rmtree(folder)
        for sub in ("img_dir", "ann_dir"):
            (folder / sub).mkdir(parents=True)
    tiles = sorted((source / "img_dir").glob("*.png"))
    if not tiles:
        raise SystemExit(f"{source}: no LoveDA tiles (img_dir/*.png)")
    cut = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for img in tiles:
            ann = source / "ann_dir" / img.name
            with rasterio.open(img) as ds:
                image = ds.read()
            with rasterio.open(ann) as ds:
                labels = ds.read(1)
            width = image.shape[-1]
            cut = width - int(round(width * holdout))
            profile = dict(driver="GTiff", height=image.shape[1], width=cut, dtype="uint8")
            with rasterio.open(train / "img_dir" / f"{img.stem}.tif", "w", count=3, **profile) as dst:
                dst.write(image[:, :, :cut])
            with rasterio.open(train / "ann_dir" / f"{img.stem}.tif", "w", count=1, **profile) as dst:
                dst.write(labels[:, :cut], 1)
            (test / "img_dir" / img.name).symlink_to(img.resolve())
            held = labels.copy()
            held[:, :cut] = 0  # LoveDA's "no data": not counted
            with rasterio.open(test / "ann_dir" / img.name, "w", driver="PNG", height=held.shape[0],
                               width=held.shape[1], count=1, dtype="uint8") as dst:
                dst.write(held, 1)
    return {"train": train, "test": test, "tiles": len(tiles), "cut": cut}


# --------------------------------------------------------------------------- methods


def method_options(method: str, args: argparse.Namespace, seed: int):
    from glnet.config import TrainConfig
    from glnet.train.training import TrainOptions

    common = dict(preset=args.preset, val_fraction=0.0, seed=seed, threads=args.threads,
                  decoder_lr_factor=args.decoder_lr_factor,
                  loss=TrainConfig(patches_per_window=args.patches_per_step
                                   // args.glnet_windows_per_step,
                                   **({} if args.coupling_weight is None
                                      else {"coupling_weight": args.coupling_weight})))
    if args.lr:
        lr = dict(zip((1, 2, 3), args.lr * 3 if len(args.lr) == 1 else args.lr))
    else:  # the training defaults of the preset (pretrained or not)
        lr = {}
    if method == "GLNet":
        steps = dict(zip((1, 2, 3), glnet_steps(args)))
        return TrainOptions(window_size=args.window, global_size=args.global_size,
                            patch_size=args.patch, stages=(1, 2, 3), steps=steps,
                            windows_per_epoch=max(steps.values()) * args.glnet_windows_per_step,
                            windows_per_step={1: 1, 2: args.glnet_windows_per_step, 3: 1},
                            lr=lr, **common)
    first = {1: lr[1]} if lr else {}
    if method == "global only":
        return TrainOptions(window_size=args.window, global_size=args.global_size,
                            patch_size=args.patch, stages=(1,), steps={1: args.steps},
                            windows_per_epoch=args.steps, windows_per_step={1: 1},
                            lr=first, **common)
    if method == "local only":
        k = args.patches_per_step
        return TrainOptions(window_size=args.patch, global_size=args.patch, patch_size=args.patch,
                            stages=(1,), steps={1: args.steps}, windows_per_epoch=k * args.steps,
                            windows_per_step={1: k}, lr=first, **common)
    raise ValueError(method)


def glnet_steps(args: argparse.Namespace) -> list[int]:
    """GLNet's steps per stage: ``--steps`` shared out by ``--glnet-split``."""
    shares = args.glnet_split
    steps = [args.steps * w // sum(shares) for w in shares]
    steps[1] += args.steps - sum(steps)  # rounding goes to the local branch's stage
    return steps


def budget_of(method: str, args: argparse.Namespace) -> dict:
    k = args.patches_per_step
    if method == "GLNet":
        s1, s2, s3 = glnet_steps(args)
        return {"steps": s1 + s2 + s3, "steps_per_stage": [s1, s2, s3],
                "context_windows": s1 + s2 + s3,
                "full_res_patches_with_loss": (s2 + s3) * k,
                "geometry": f"{args.window} / {args.global_size} / {args.patch}"}
    if method == "global only":
        return {"steps": args.steps, "context_windows": args.steps, "full_res_patches_with_loss": 0,
                "geometry": f"{args.window} / {args.global_size} / -"}
    return {"steps": args.steps, "context_windows": 0, "full_res_patches_with_loss": k * args.steps,
            "geometry": f"{args.patch} / {args.patch} / {args.patch}"}


def run_method(dataset: str, method: str, data: dict, args: argparse.Namespace, work: Path,
               seed: int) -> dict:
    from glnet.config import SegmentOptions
    from glnet.evaluate.model import evaluate_model, evaluate_model_on_dataset
    from glnet.modelfile import read_metadata
    from glnet.train.datasets import scenes_from_folder, scenes_from_pairs
    from glnet.train.training import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dataset == "synthetic":
            scenes, classes = scenes_from_pairs([data["train"] / "scene.tif"],
                                                [data["train"] / "labels.tif"])
        else:
            scenes, classes = scenes_from_folder(data["train"], tiles=data.get("train_tiles"))
        model = work / f"{dataset}-{method.replace(' ', '-')}-{args.preset}-{seed}.glnet"
        for stale in (model, model.with_name(model.name + ".ckpt")):
            stale.unlink(missing_ok=True)
        options = method_options(method, args, seed)
        log(f"== {dataset}: {method}: seed {seed}: training")
        t0 = time.perf_counter()
        result = train(scenes, classes, model, options, log=lambda text: log(f"   {text}"))
        train_s = time.perf_counter() - t0
        model.with_name(model.name + ".ckpt").unlink(missing_ok=True)
        meta = read_metadata(model)
        seg = SegmentOptions(threads=args.threads, precision=args.precision)
        log(f"== {dataset}: {method}: segmenting and scoring")
        t0 = time.perf_counter()
        if dataset == "synthetic":
            ev = evaluate_model(model, data["test"] / "scene.tif", data["test"] / "labels.tif",
                                segment_options=seg)
        else:
            ev = evaluate_model_on_dataset(model, data["test"], segment_options=seg,
                                           tiles=data.get("test_tiles"))
        score_s = time.perf_counter() - t0
    m = ev.matrix
    out = {"dataset": dataset, "method": method, "seed": seed, "miou": float(m.miou()),
           "overall_accuracy": float(m.overall_accuracy()),
           "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(ev.class_names, m.iou())},
           "ref_pixels": {name: int(v) for name, v in zip(ev.class_names, m.ref_counts)},
           "pred_pixels": {name: int(v) for name, v in zip(ev.class_names, m.pred_counts)},
           "scored_classes": [ev.class_names[c] for c in m.scored_classes()],
           "pixels": m.total, "stages": list(meta.stages),
           "confusion_matrix": m.matrix.tolist(),
           "losses": [round(h["loss"], 4) for h in result.history],
           "train_seconds": round(train_s, 1), "score_seconds": round(score_s, 1),
           "budget": budget_of(method, args)}
    log(f"   mIoU {out['miou']:.4f}, accuracy {out['overall_accuracy']:.4f}, "
        f"train {train_s:.0f} s, score {score_s:.0f} s")
    return out


# --------------------------------------------------------------------------- report


def summarise(runs: list[dict]) -> dict:
    """One method's runs over seeds: mean and spread (half the range) of each score."""
    def stat(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"mean": float(np.mean(values)), "spread": float((max(values) - min(values)) / 2)}

    names = list(runs[0]["iou"])
    return {"method": runs[0]["method"], "seeds": [r["seed"] for r in runs],
            "miou": stat([r["miou"] for r in runs]),
            "miou_per_seed": [round(r["miou"], 4) for r in runs],
            "overall_accuracy": stat([r["overall_accuracy"] for r in runs]),
            "iou": {n: stat([r["iou"][n] for r in runs]) for n in names},
            "ref_pixels": runs[0]["ref_pixels"],
            "pred_pixels": {n: sum(r["pred_pixels"][n] for r in runs) for n in names},
            "budget": runs[0]["budget"],
            "train_seconds": float(np.mean([r["train_seconds"] for r in runs]))}


def _pm(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['spread']:.3f}" if stat["spread"] else f"{stat['mean']:.3f}"


def table(rows: list[dict]) -> str:
    """Markdown table of ``summarise`` rows: mean ± spread over the seeds."""
    names = list(rows[0]["iou"])
    present = [n for n in names if any(r["ref_pixels"][n] for r in rows)]
    head = ["method", "window / global / patch", "steps", "train s", "mIoU", "mIoU per seed", "OA",
            *[f"IoU {n}" for n in present]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = max(r["miou"]["mean"] for r in rows)
    for r in rows:
        b = r["budget"]
        steps = ("+".join(map(str, b["steps_per_stage"])) if "steps_per_stage" in b
                 else str(b["steps"]))
        miou = _pm(r["miou"])
        cells = [r["method"], b["geometry"], steps, f"{r['train_seconds']:.0f}",
                 f"**{miou}**" if r["miou"]["mean"] == best else miou,
                 ", ".join(f"{v:.3f}" for v in r["miou_per_seed"]), _pm(r["overall_accuracy"]),
                 *[_pm(r["iou"][n]) for n in present]]
        lines.append("| " + " | ".join(cells) + " |")
    absent = [n for n in names if n not in present]
    extra = [f"{r['method']}: {', '.join(n for n in absent if r['pred_pixels'][n])}"
             for r in rows if any(r["pred_pixels"][n] for n in absent)]
    note = ""
    if absent:
        note = (f"\n\nClasses absent from the test reference: {', '.join(absent)}"
                + (f"; predicted anyway (IoU 0, counted in mIoU) by {'; '.join(extra)}" if extra
                   else "") + ".")
    return "\n".join(lines) + note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 12 steps, a 512 px synthetic scene (numbers meaningless)")
    parser.add_argument("--steps", type=int, default=900,
                        help="optimiser steps per method (GLNet: shared out by --glnet-split; "
                             "default 900)")
    parser.add_argument("--glnet-split", type=lambda t: [int(v) for v in t.split(",")],
                        default=[1, 7, 1],
                        help="GLNet's shares of the steps for stages 1, 2, 3 (default 1,7,1, "
                             "the demo's split)")
    parser.add_argument("--datasets", default="synthetic,loveda,dubai",
                        help="any of synthetic, loveda, dubai (default all three)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"methods to run (default all: {', '.join(METHODS)})")
    parser.add_argument("--window", type=int, default=416, help="GLNet context window (416)")
    parser.add_argument("--global-size", type=int, default=128, help="global branch input (128)")
    parser.add_argument("--patch", type=int, default=128, help="local patch / local-only window (128)")
    parser.add_argument("--patches-per-step", type=int, default=4,
                        help="GLNet patches with a loss per window; local-only windows per step (4)")
    parser.add_argument("--glnet-windows-per-step", type=int, default=1,
                        help="GLNet stage 2: context windows per step, sharing the patches "
                             "with a loss (--patches-per-step / this each; default 1)")
    parser.add_argument("--coupling-weight", type=float, default=None,
                        help="GLNet stage 2: weight of the weak-coupling MSE (default: the "
                             "training default)")
    parser.add_argument("--synth-size", type=int, default=2048, help="synthetic scene side (2048)")
    parser.add_argument("--feature-size", type=float, default=200.0,
                        help="synthetic feature size in px (200)")
    parser.add_argument("--synth-seeds", type=lambda t: tuple(int(v) for v in t.split(",")),
                        default=(0, 1), help="seeds of the synthetic training and test scenes "
                                             "(default 0,1; other seeds for trial runs)")
    parser.add_argument("--holdout", type=float, default=0.25,
                        help="right-hand share of each LoveDA tile held out for testing (0.25)")
    parser.add_argument("--loveda", type=Path, default=LOVEDA, help="LoveDA sample folder")
    parser.add_argument("--dubai", type=Path, default=DUBAI, help="Dubai aerial tiles folder")
    parser.add_argument("--dubai-split", default="1,2,3,4,5/6,7",
                        help="Dubai tiles to train on / to test on (default 1,2,3,4,5/6,7)")
    parser.add_argument("--lr", type=lambda t: [float(v) for v in t.split(",")], default=None,
                        help="learning rate, or one per GLNet stage (the baselines take the "
                             "first); default: the preset's training defaults")
    parser.add_argument("--decoder-lr-factor", type=float, default=None,
                        help="decoders' learning rate relative to the trunks' (training default)")
    parser.add_argument("--preset", default="lite", help="network preset of every method (lite)")
    parser.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1],
                        help="training seeds; scores are mean and spread over them (0,1)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="precision of the scoring runs (default fp32, the training's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU a second thread slows "
                             "small windows down)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glnet-accuracy"))
    parser.add_argument("--json", type=Path, help="results file (default WORKDIR/accuracy.json)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.synth_size, args.feature_size = 12, 512, 96.0
    if args.lr is not None and len(args.lr) not in (1, 3):
        parser.error("--lr takes one learning rate or three (one per GLNet stage)")
    if len(args.glnet_split) != 3 or min(args.glnet_split) < 1:
        parser.error("--glnet-split: three positive whole shares, e.g. 1,4,1")
    if args.glnet_windows_per_step < 1 or args.patches_per_step % args.glnet_windows_per_step:
        parser.error("--glnet-windows-per-step: a positive divisor of --patches-per-step")
    if min(glnet_steps(args)) < 1:
        parser.error("--steps: too few to give every GLNet stage a step")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not set(datasets) <= {"synthetic", "loveda", "dubai"}:
        parser.error("--datasets: choose from synthetic, loveda, dubai")
    train_tiles, _, test_tiles = args.dubai_split.partition("/")
    split = ([int(t) for t in train_tiles.split(",")], [int(t) for t in test_tiles.split(",")])
    if not split[0] or not split[1] or set(split[0]) & set(split[1]):
        parser.error("--dubai-split: two disjoint lists of tiles, e.g. 1,2,3,4,5/6,7")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or not set(methods) <= set(METHODS):
        parser.error(f"--methods: choose from {', '.join(METHODS)}")

    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, list[dict]] = {}
    data = {}
    if "synthetic" in datasets:
        data["synthetic"] = synth_data(work, args.synth_size, args.feature_size, args.synth_seeds)
    if "loveda" in datasets:
        data["loveda"] = loveda_data(work, args.loveda, args.holdout)
    if "dubai" in datasets:
        # Whole tiles apart: no test pixel lies in any training image.
        data["dubai"] = {"train": args.dubai, "test": args.dubai, "train_tiles": split[0],
                         "test_tiles": split[1]}
    for dataset in datasets:
        results[dataset] = [[run_method(dataset, m, data[dataset], args, work, seed)
                             for seed in args.seeds] for m in methods]
    minutes = (time.perf_counter() - started) / 60

    command = "python benchmarks/accuracy.py" + " ".join([""] + sys.argv[1:])
    print(f"Command: `{command}` ({minutes:.1f} min wall, {args.threads} torch thread(s), "
          f"{platform.processor() or platform.machine()})\n")
    rates = ", ".join(f"{v:g}" for v in args.lr) if args.lr else "the preset's defaults"
    k = args.patches_per_step
    parts = {"GLNet": f"GLNet {' + '.join(map(str, glnet_steps(args)))} for stages 1-3, {k} "
                      "patches with a loss per window in stages 2-3",
             "global only": "global only one window per step",
             "local only": f"local only {k} windows per step"}
    print(f"Budget: {args.steps} optimiser steps per method, preset {args.preset}, seeds "
          f"{', '.join(map(str, args.seeds))}, learning rate "
          f"{rates}; {'; '.join(parts[m] for m in methods)}.\n")
    titles = {"synthetic": f"synthetic ({args.synth_size} px, feature size {args.feature_size:g} px; "
                           f"train seed {args.synth_seeds[0]}, test seed {args.synth_seeds[1]})",
              "loveda": f"LoveDA ({data.get('loveda', {}).get('tiles', 0)} tiles; train on columns "
                        f"0-{(data.get('loveda', {}).get('cut') or 1) - 1}, test on the rest)",
              "dubai": f"Dubai aerial (train on tiles {split[0]}, test on tiles {split[1]})"}
    for dataset, rows in results.items():
        print(f"**{titles[dataset]}**\n")
        print(table([summarise(runs) for runs in rows]) + "\n")
    out = args.json or work / "accuracy.json"
    out.write_text(json.dumps({"command": command, "minutes": round(minutes, 2),
                               "settings": {k: (str(v) if isinstance(v, Path) else v)
                                            for k, v in vars(args).items()},
                               "results": results}, indent=1))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
