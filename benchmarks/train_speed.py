"""Training throughput with and without window prefetching, same process, same seed.

Trains the same GLNet twice on one scene, for a fixed number of optimiser
steps (no time budget, no validation): once with every batch of windows read
and augmented between steps (``prefetch=False``, the baseline) and once with
the next batch made on a thread during each step (the default). Prints steps
per second of both, their ratio, and whether the two models are identical
(on the CPU they must be: prefetching changes when windows are read, not
which; on a GPU, cuDNN's backward kernels are not bit-reproducible anyway).

Usage (a scene from ``glnet synth DIR --size 8000 --seed 1``)::

    python benchmarks/train_speed.py DIR/scene.tif DIR/labels.tif
    python benchmarks/train_speed.py DIR/scene.tif DIR/labels.tif --device cuda --epochs 3,3,3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def run(scene: Path, labels: Path, out: Path, prefetch: bool, args) -> tuple[float, int, dict]:
    from glnet.config import TrainConfig
    from glnet.modelfile import load_model
    from glnet.train.datasets import scenes_from_pairs
    from glnet.train.training import TrainOptions, train

    scenes, classes = scenes_from_pairs([scene], [labels])
    epochs = [int(v) for v in args.epochs.split(",")]
    options = TrainOptions(
        stages=(1, 2, 3), epochs=dict(zip((1, 2, 3), epochs)),
        windows_per_epoch=args.windows_per_epoch, val_fraction=0.0, seed=args.seed,
        threads=args.threads, device=args.device, prefetch=prefetch,
        loss=TrainConfig(patches_per_window=args.patches_per_window))
    started = time.perf_counter()
    result = train(scenes, classes, out, options, log=lambda text: None)
    seconds = time.perf_counter() - started
    steps = sum(r["steps"] for r in result.history)
    model, _ = load_model(out)
    return seconds, steps, {k: v.clone() for k, v in model.state_dict().items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--epochs", default="2,2,2", help="epochs of stages 1, 2, 3")
    parser.add_argument("--windows-per-epoch", type=int, default=6)
    parser.add_argument("--patches-per-window", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    with tempfile.TemporaryDirectory(prefix="glnet-train-speed-") as work:
        # Untimed first: CUDA's start-up and kernel selection would otherwise count
        # against whichever run goes first.
        warm = argparse.Namespace(**{**vars(args), "epochs": "1,1,1", "windows_per_epoch": 2})
        run(args.scene, args.labels, Path(work) / "warm.glnet", False, warm)
        results = {}
        for name, prefetch in (("baseline (no prefetch)", False), ("prefetch", True)):
            seconds, steps, state = run(args.scene, args.labels, Path(work) / f"{prefetch}.glnet",
                                        prefetch, args)
            results[name] = (seconds, steps, state)
            print(f"{name}: {steps} steps in {seconds:.1f} s", file=sys.stderr)
    (b_s, b_n, b_state), (p_s, p_n, p_state) = results.values()
    same = b_state.keys() == p_state.keys() and all(torch.equal(b_state[k], p_state[k])
                                                   for k in b_state)
    summary = {"device": args.device, "threads": args.threads, "steps": b_n,
               "baseline_s": round(b_s, 1), "prefetch_s": round(p_s, 1),
               "speedup": round(b_s / p_s, 3), "identical_models": same}
    print(json.dumps(summary))
    print("\n| run | steps | time | steps/s | ratio |\n|---|---|---|---|---|")
    print(f"| baseline: windows read between steps | {b_n} | {b_s:.1f} s | {b_n / b_s:.3f} | 1.00x |")
    print(f"| prefetch: next windows read during the step | {p_n} | {p_s:.1f} s | "
          f"{p_n / p_s:.3f} | {b_s / p_s:.2f}x |")
    print(f"\nmodels identical: {same}")
    return 0 if same or args.device != "cpu" else 1


if __name__ == "__main__":
    sys.exit(main())
