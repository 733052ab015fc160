"""The main job end to end on generated data: ``python -m glnet.demo OUT_DIR``.

synth -> train -> segment -> vectorize -> evaluate, each as its own ``glnet``
process so that its wall time and peak memory are measured separately; then
a quicklook picture (image, truth, prediction, legend), a confusion-matrix
picture, a picture of the mask and polygons over the scene drawn by QGIS's
own map renderer, and a Markdown report. The first two need matplotlib
(``pip install matplotlib``, the engine's ``demo`` extra); the QGIS picture needs a Python that
imports ``qgis`` (``/usr/bin/python3`` with Debian's python3-qgis, or
``--qgis-python``) and the repository's ``glnet_qgis/render.py``, run in a
child process: the engine never imports QGIS. What is missing is noted in the
report instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoOptions:
    """Sizes and budgets of the demo.

    The scene and the network's geometry are the ``lite`` preset's at half
    scale: a 4000 px scene of 450 px fields (``glnet synth``'s 900 px default
    halved) and 940 px windows seen at 256 px by the global branch, with 256 px
    patches (1880 / 512 / 512 halved: the same 3.7x downsampling and 4 x 4
    patches per window). A step then costs a quarter, which is what fits the
    training into the demo's budget on two cores.

    Training is budgeted in optimiser steps per stage, so a slow or busy
    machine trains the same model; ``train_minutes`` is only a cap (None: none).
    Most steps go to stage 2, the local branch (benchmarks/accuracy.py,
    synthetic scene, seed 0: 150+600+150 steps mIoU 0.837 and road IoU 0.37,
    against 0.785 and 0.19 for 300+300+300).
    ``windows_per_epoch`` covers stage 2's steps (one window each; stage 1
    takes 2), so that each stage is one epoch with one validation.
    """

    size: int = 4000
    feature_size: float = 450.0
    window: int = 940
    global_size: int = 256
    patch: int = 256
    seed: int = 1
    preset: str = "lite"
    steps: tuple[int, int, int] = (100, 600, 100)
    windows_per_epoch: int = 600
    train_minutes: float | None = None
    patches_per_window: int = 4
    min_pixels: int = 16
    qgis_python: str = "/usr/bin/python3"


@dataclass
class StepResult:
    name: str
    argv: list[str]
    seconds: float
    peak_mb: float
    stdout: str


def run_step(name: str, args: list[str], log) -> StepResult:
    """Run ``glnet ARGS`` in a child process; its wall time and peak RSS (``wait4``)."""
    argv = [sys.executable, "-m", "glnet.cli", "--progress", "none", *map(str, args)]
    log(f"[{name}] glnet {' '.join(map(str, args))}")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"demo: step {name} failed (exit {proc.returncode})")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    log(f"[{name}] {seconds:.1f} s, peak {peak:.0f} MB")
    return StepResult(name, argv, seconds, peak, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glnet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("demo_output"))
    parser.add_argument("--size", type=int, default=DemoOptions.size)
    parser.add_argument("--steps", type=lambda t: tuple(int(v) for v in t.split(",")),
                        default=DemoOptions.steps,
                        help="optimiser steps of training stages 1, 2, 3 (default "
                             f"{','.join(map(str, DemoOptions.steps))})")
    parser.add_argument("--train-minutes", type=float, default=DemoOptions.train_minutes,
                        help="a cap on training time (default none: the steps decide)")
    parser.add_argument("--seed", type=int, default=DemoOptions.seed)
    parser.add_argument("--patches-per-window", type=int, default=DemoOptions.patches_per_window,
                        help="patches with a loss per window in training stages 2 and 3")
    parser.add_argument("--qgis-python", default=os.environ.get("GLNET_QGIS_PYTHON",
                                                                DemoOptions.qgis_python),
                        help="a Python that imports qgis, for the QGIS picture "
                             "(default /usr/bin/python3 or $GLNET_QGIS_PYTHON; '' for none)")
    args = parser.parse_args(argv)
    if len(args.steps) != 3 or min(args.steps) < 1:
        parser.error("--steps takes three positive step counts, one per stage")
    opts = DemoOptions(size=args.size, steps=args.steps, train_minutes=args.train_minutes, seed=args.seed,
                       patches_per_window=args.patches_per_window, qgis_python=args.qgis_python)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, flush=True)

    scene_dir = out / "scene"
    scene, labels = scene_dir / "scene.tif", scene_dir / "labels.tif"
    model, mask, polygons = out / "model.glnet", out / "mask.tif", out / "polygons.gpkg"
    steps = [
        run_step("synth", ["synth", scene_dir, "--size", opts.size, "--feature-size", opts.feature_size,
                           "--seed", opts.seed, "--overwrite"], log),
        run_step("train", ["train", scene, "--labels", labels, "-o", model, "--overwrite",
                           "--preset", opts.preset, "--window", opts.window, "--global-size",
                           opts.global_size, "--patch", opts.patch,
                           "--steps", ",".join(map(str, opts.steps)),
                           "--windows-per-epoch", opts.windows_per_epoch,
                           *(["--max-minutes", opts.train_minutes] if opts.train_minutes else []),
                           "--patches-per-window", opts.patches_per_window, "--seed", opts.seed], log),
        run_step("segment", ["segment", scene, "-m", model, "-o", mask, "--overwrite"], log),
        run_step("vectorize", ["vectorize", mask, "-o", polygons, "--min-pixels", opts.min_pixels,
                               "--overwrite"], log),
        run_step("evaluate", ["evaluate", mask, labels, "--json"], log),
    ]
    # The checkpoint only serves `glnet train --resume`: 3x the model's size, of no use here.
    Path(f"{model}.ckpt").unlink(missing_ok=True)
    evaluation = json.loads(steps[-1].stdout.strip().splitlines()[-1])
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    pictures = _pictures(out, scene, labels, mask, evaluation, log)
    qgis = qgis_picture(out / "qgis.png", scene, mask, polygons, opts.qgis_python, log,
                        title=f"GLNet land cover of a {opts.size} x {opts.size} px synthetic scene "
                              f"(mIoU {evaluation['miou']:.3f})")
    _report(out, opts, steps, evaluation, pictures, qgis)
    log(f"mIoU {evaluation['miou']:.4f}; report: {out / 'report.md'}")
    return 0


def _pictures(out: Path, scene: Path, labels: Path, mask: Path, evaluation: dict, log) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        log("matplotlib is not installed: no pictures (pip install matplotlib, the engine's "
            "'demo' extra)")
        return []
    import numpy as np
    import rasterio

    side = 1000
    with rasterio.open(scene) as ds:
        shape = (min(side, ds.height), min(side, ds.width))
        img = ds.read((1, 2, 3) if ds.count >= 3 else (1, 1, 1), out_shape=(3, *shape)).astype(np.float32)
    lo, hi = np.percentile(img, (1, 99), axis=(1, 2), keepdims=True)
    rgb = np.clip((img - lo) / np.maximum(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)
    with rasterio.open(labels) as ds:
        truth = ds.read(1, out_shape=shape)
    with rasterio.open(mask) as ds:
        pred = ds.read(1, out_shape=shape)
    classes = evaluation["classes"]
    colors = [_color(c, i) for i, c in enumerate(_class_colors(labels, len(classes)))]
    cmap = ListedColormap(np.array(colors) / 255.0)
    fig, axes = plt.subplots(1, 3, figsize=(16, 6), constrained_layout=True)
    for ax, (title, data) in zip(axes, [("image", None), ("truth", truth), ("prediction", pred)]):
        if data is None:
            ax.imshow(rgb)
        else:
            ax.imshow(np.ma.masked_equal(data, 255), cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5,
                      interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.legend(handles=[Patch(color=np.array(col) / 255.0, label=c["name"]) for c, col in zip(classes, colors)],
               loc="lower center", ncol=len(classes), frameon=False)
    fig.savefig(out / "quicklook.png", dpi=80)
    plt.close(fig)

    matrix = np.array(evaluation["confusion_matrix"], dtype=np.float64)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    names = [c["name"] for c in classes]
    fig, ax = plt.subplots(figsize=(7, 6), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="share of reference pixels")
    ax.set_title(f"confusion matrix (mIoU {evaluation['miou']:.3f})")
    fig.savefig(out / "confusion.png", dpi=90)
    plt.close(fig)
    return ["quicklook.png", "confusion.png"]


@dataclass
class QgisPicture:
    """The QGIS picture: its path and the command that drew it, or why there is none."""

    path: Path | None
    command: str
    seconds: float = 0.0
    note: str = ""


REPO_ROOT = Path(__file__).resolve().parents[1]
RENDER_SCRIPT = REPO_ROOT / "glnet_qgis" / "render.py"


def qgis_picture(png: Path, scene: Path, mask: Path, polygons: Path, python: str, log,
                 title: str | None = None, timeout: float = 600) -> QgisPicture:
    """Draw ``png`` with QGIS's map renderer (``glnet_qgis/render.py`` in QGIS's Python).

    Never raises for a missing QGIS: the result's ``note`` says what is missing.
    """
    png = png.resolve()
    args = ["--scene", scene.resolve(), "--mask", mask.resolve(), "--polygons", polygons.resolve(),
            "-o", png]
    if title:
        args += ["--title", title]
    command = (f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} QT_QPA_PLATFORM=offscreen "
               + shlex.join([python or "python3", "-m", "glnet_qgis.render", *map(str, args)]))
    if not python:
        return QgisPicture(None, command, note="no QGIS Python given (--qgis-python '')")
    if not RENDER_SCRIPT.is_file():
        return QgisPicture(None, command, note=f"{RENDER_SCRIPT} is missing (glnet installed "
                                               "without the repository's glnet_qgis/)")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "QGIS_")) and k != "VIRTUAL_ENV"}
    env.update(PYTHONPATH=str(REPO_ROOT), QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    try:
        probe = subprocess.run([python, "-c", "import qgis.core"], env=env, capture_output=True,
                               text=True, timeout=120)
    except OSError as exc:
        probe = None
        reason = f"{python}: {exc.strerror or exc}"
    else:
        reason = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    if probe is None or probe.returncode != 0:
        note = f"QGIS is not available: `{python} -c 'import qgis.core'` failed ({reason})"
        log(f"[qgis] no QGIS picture: {note}")
        return QgisPicture(None, command, note=note)
    log(f"[qgis] {command}")
    start = time.monotonic()
    try:
        proc = subprocess.run([python, "-m", "glnet_qgis.render", *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return QgisPicture(None, command, note=f"the QGIS render took more than {timeout:g} s")
    seconds = time.monotonic() - start
    if proc.returncode != 0 or not png.is_file():
        tail = " ".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:])
        note = f"the QGIS render failed (exit {proc.returncode}): {tail}"
        log(f"[qgis] {note}")
        return QgisPicture(None, command, seconds, note=note)
    log(f"[qgis] {seconds:.1f} s: {proc.stdout.strip()}")
    return QgisPicture(png, command, seconds)


def _class_colors(labels: Path, n: int) -> list:
    import rasterio

    with rasterio.open(labels) as ds:
        cmap = ds.colormap(1)
    return [cmap.get(i, None) for i in range(n)]


def _color(entry, i: int) -> tuple[int, int, int]:
    from .palette import default_colors

    return tuple(entry[:3]) if entry else default_colors(i + 1)[i]


def _cap(opts: DemoOptions) -> str:
    return f"; at most {opts.train_minutes:g} minutes" if opts.train_minutes else ""


def _report(out: Path, opts: DemoOptions, steps: list[StepResult], ev: dict, pictures: list[str],
            qgis: QgisPicture | None = None) -> None:
    lines = ["# glnet demo report", "",
             f"A {opts.size} x {opts.size} px synthetic scene (`glnet synth`, fields of about "
             f"{opts.feature_size:g} px), a `{opts.preset}` GLNet (window {opts.window} px, seen at "
             f"{opts.global_size} px by the global branch; {opts.patch} px patches) trained on it for {' + '.join(map(str, opts.steps))} optimiser steps (stages 1, 2, 3; "
             f"the right-hand 20 % held out for validation{_cap(opts)}), "
             "the whole scene segmented in bounded memory, the mask vectorized, and the mask scored "
             "against the synthetic truth over the whole scene (training area included).", "",
             "## Steps", "", "| step | wall time (s) | peak memory (MB) | command |", "|---|---|---|---|"]
    for s in steps:
        cmd = "glnet " + " ".join(s.argv[5:])
        lines.append(f"| {s.name} | {s.seconds:.1f} | {s.peak_mb:.0f} | `{cmd}` |")
    lines += ["", "## Accuracy (`glnet evaluate`)", "",
              f"mIoU **{ev['miou']:.4f}**, overall accuracy {ev['overall_accuracy']:.4f}, "
              f"mean F1 {ev['mean_f1']:.4f}, {ev['pixels']:,} pixels.", "",
              "| class | IoU | F1 | reference pixels | predicted pixels |", "|---|---|---|---|---|"]
    for c in ev["classes"]:
        iou = "-" if c["iou"] is None else f"{c['iou']:.4f}"
        f1 = "-" if c["f1"] is None else f"{c['f1']:.4f}"
        lines.append(f"| {c['value']} {c['name']} | {iou} | {f1} | {c['ref_pixels']:,} | {c['pred_pixels']:,} |")
    lines.append("")
    for p in pictures:
        lines += [f"![{p}]({p})", ""]
    if qgis is not None:
        lines += ["## In QGIS", ""]
        if qgis.path is not None:
            lines += ["The mask (its `mask.qml` style, semi-transparent) and the polygon outlines "
                      "over the scene, drawn by QGIS's own map renderer "
                      f"({qgis.seconds:.1f} s):", "", f"![qgis.png]({qgis.path.name})", "",
                      f"`{qgis.command}`", ""]
        else:
            lines += [f"No QGIS picture: {qgis.note}.", ""]
    files = "`mask.tif` (COG) and `mask.qml`, `polygons.gpkg`, `model.glnet`, `evaluation.json`, `scene/`"
    if qgis is not None and qgis.path is not None:
        files += ", `qgis.png`"
    lines += [f"Files: {files}.", ""]
    (out / "report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
