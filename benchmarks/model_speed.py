"""Model-only throughput of GLNet's presets against a single-branch ResNet-FPN.

Run from the repository root (``make bench`` runs the default)::

    .venv/bin/python benchmarks/model_speed.py            # full run, a few minutes
    .venv/bin/python benchmarks/model_speed.py --quick    # one timed round, ~1 minute

It prints a Markdown table (for the README) on stdout, progress on stderr.

Definitions
-----------
Throughput
    Megapixels of the context window per second of wall time (MP/s), model
    only: no raster reading, normalisation, tiling of a scene or writing. The
    input is one random normalised window, ``torch.randn(1, bands, S, S)``.
GLNet mode M
    ``predict_window(model, window, mode=M)`` with ``model = GLNet(cfg,
    context_branch=True)`` in eval mode, i.e. the complete stage-3 network
    (random weights: speed does not depend on them):

    * mode 1: the global branch alone (window downsampled to ``global_size``),
      its logits upsampled to the window, softmax;
    * mode 2: global to local: the local branch on every patch (refinement
      policy ``all``) with the global maps shared at every FPN stage, the 3x3
      aggregation conv, patch probabilities averaged where patches overlap;
    * mode 3: mode 2 plus local to global: the local maps merged into the
      global frame and the global branch run again with them (the full GLNet).
Baseline
    The same backbone's single-branch ResNet-FPN with the preset's decoder
    widths: the global branch's plain path (``model.global_pyramid``, i.e.
    global_backbone + global_decoder without context) at full resolution on
    non-overlapping ``patch_size`` tiles that cover the same window (edge tiles
    are smaller), in sub-batches of ``--sub-batch`` tiles like the local branch,
    logits bilinearly upsampled to the tile and soft-maxed in fp32 (the
    post-processing ``predict_window`` does), in the model's memory format
    (channels_last when the preset uses it): ``SingleBranchFPN`` of
    ``benchmarks/peer.py``, the peer ``scene_scale.py`` runs over whole scenes.
    Same process, same run, same threads.
Timing
    ``torch.set_num_threads(--threads)`` (2 by default), ``torch.inference_mode()``,
    one warm-up run of every case, then ``--repeats`` rounds that each run
    every case once, in an order that rotates from round to round so that a
    slow spell of the machine hits all cases alike. Reported: median wall time
    per case; ratio = baseline median / case median. "cores busy" is the
    process's CPU time over wall time (median): about the thread count when
    nothing else competes for the CPU (mode 1, short and partly serial, reads
    lower); lower for the long cases means the numbers are pessimistic.
Official window
    The ``official`` preset's 2448 px window (6 x 6 patches of 508 px) takes
    minutes per window on 2 cores, so by default it is measured on a 1224 px
    window (``--official-window``). The model's geometry is unchanged: the
    global input is then 254 px (the same 508/2448 downsampling), and the 3 x 3
    patches of 508 px overlap by 150 px, the same local redundancy (1.55) as
    the full window's 6 x 6. ``--official-window 2448`` measures the real one.
bf16
    With ``--bf16``, extra rows run the baseline and mode 3 under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``; their ratio is against the
    bf16 baseline. The project's speed target is for fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from peer import SingleBranchFPN

from glnet.config import PRESETS, preset
from glnet.nn.glnet import GLNet
from glnet.nn.patches import PatchGrid
from glnet.nn.predict import predict_window

# Default window side per preset; None keeps the preset's own window_size.
DEFAULT_WINDOWS = {"lite": None, "fast": None, "official": 1224}


@dataclass
class Case:
    """One timed configuration of one preset."""

    what: str
    run: Callable[[], object]
    bf16: bool = False
    wall: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)

    def timed(self) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        cpu0, t0 = time.process_time(), time.perf_counter()
        with ctx:
            self.run()
        wall = time.perf_counter() - t0
        self.wall.append(wall)
        self.cores.append((time.process_time() - cpu0) / wall)


def baseline_window(net: SingleBranchFPN, window: torch.Tensor, sub_batch: int) -> torch.Tensor:
    """Single-branch ResNet-FPN probabilities ``(C, H, W)`` on non-overlapping tiles.

    Tiles of ``patch_size`` (smaller at the window's far edges) go through the
    global branch's plain path at full resolution, ``sub_batch`` tiles of one
    shape per pass; logits are upsampled to the tile and soft-maxed.
    """
    cfg = net.cfg
    H, W = window.shape[-2:]
    p = cfg.patch_size
    by_shape: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for t in range(0, H, p):
        for left in range(0, W, p):
            by_shape.setdefault((min(p, H - t), min(p, W - left)), []).append((t, left))
    out = torch.empty((cfg.num_classes, H, W), dtype=torch.float32)
    for (h, w), tiles in by_shape.items():
        for start in range(0, len(tiles), sub_batch):
            part = tiles[start:start + sub_batch]
            crops = [window[0, :, t:t + h, left:left + w] for t, left in part]
            probs = net(torch.stack(crops))
            for prob, (t, left) in zip(probs, part):
                out[:, t:t + h, left:left + w] = prob
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    name = fields.get("model name", "unknown")
    fam = f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else ""
    return f"{name} ({', '.join(x for x in (fam, ' '.join(isa)) if x)})"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_preset(name: str, window_size: int | None, args: argparse.Namespace
                   ) -> tuple[list[str], list[str], list[str], list[float]]:
    """Table rows, a description line, notes and each case's cores busy for one preset."""
    cfg = preset(name)
    size = window_size or cfg.window_size
    torch.manual_seed(0)
    model = GLNet(cfg, context_branch=True).eval()
    window = torch.randn(1, cfg.in_channels, size, size)
    grid = PatchGrid.for_window(size, size, cfg.patch_size, cfg.min_overlap)
    gh, gw = model.global_shape(size, size)
    sb = args.sub_batch

    peer = SingleBranchFPN(model)  # the same modules as the GLNet's global branch
    cases = [Case("baseline: single-branch ResNet-FPN", lambda: baseline_window(peer, window, sb))]
    for mode, label in ((1, "global only"), (2, "global→local"), (3, "full")):
        cases.append(Case(f"GLNet mode {mode} ({label})",
                          lambda m=mode: predict_window(model, window, mode=m, sub_batch=sb)))
    if args.bf16:
        cases.append(Case("baseline, bf16 autocast", cases[0].run, bf16=True))
        cases.append(Case("GLNet mode 3, bf16 autocast", cases[3].run, bf16=True))

    with torch.inference_mode():
        log(f"[{name}] warm-up ({len(cases)} cases, window {size} px) ...")
        for case in cases:
            case.timed()
        for r in range(args.repeats):
            k = r % len(cases)
            for case in cases[k:] + cases[:k]:
                case.timed()
            log(f"[{name}] round {r + 1}/{args.repeats}: "
                + ", ".join(f"{c.what.split(' (')[0].split(':')[0]} {c.wall[-1]:.2f}s"
                            for c in cases))

    mp = size * size / 1e6
    base = {False: statistics.median(cases[0].wall[1:])}
    if args.bf16:
        base[True] = statistics.median(cases[4].wall[1:])
    tiles = -(-size // cfg.patch_size)
    rows = []
    for case in cases:
        t = statistics.median(case.wall[1:])
        if case.what.startswith("baseline"):
            patches = f"{tiles * tiles} tiles ≤ {cfg.patch_size} px, no overlap (1.00x)"
        elif "mode 1" in case.what:
            patches = "none"
        else:
            patches = (f"{len(grid)} = {len(grid.tops)}x{len(grid.lefts)} of {cfg.patch_size} px "
                       f"({grid.redundancy:.2f}x)")
        rows.append(
            f"| {name} | {cfg.backbone} | {case.what} | {size} (global {gh}) | {patches} "
            f"| {mp / t:.2f} | {base[case.bf16] / t:.2f}x "
            f"| {statistics.median(case.cores[1:]):.1f} |"
        )
    notes = []
    if size != cfg.window_size:
        full = PatchGrid.for_window(cfg.window_size, cfg.window_size, cfg.patch_size,
                                    cfg.min_overlap)
        notes.append(
            f"- `{name}` measured on a {size} px window instead of its {cfg.window_size} px one "
            f"(fewer minutes on 2 cores): the global input shrinks with it ({gh} px, the same "
            f"{cfg.global_size}/{cfg.window_size} downsampling); local redundancy "
            f"{grid.redundancy:.2f}x here, {full.redundancy:.2f}x with the full window's "
            f"{len(full.tops)}x{len(full.lefts)} patches.")
    desc = (f"- `{name}`: {cfg.backbone}, FPN {cfg.fpn_channels}/{cfg.smooth_channels}, "
            f"fuse {cfg.fuse_kernel}x{cfg.fuse_kernel}, "
            f"{'channels_last' if cfg.channels_last else 'contiguous'}; preset window "
            f"{cfg.window_size} px, global {cfg.global_size} px, patch {cfg.patch_size} px, "
            f"min overlap {cfg.min_overlap} px; measured window {size} px")
    # Mode 1 is short and partly single-threaded (antialiased downsampling, the
    # window-sized softmax), so its cores busy reads low even on an idle machine.
    busy = [statistics.median(c.cores[1:]) for c in cases if "mode 1" not in c.what]
    return rows, [desc], notes, busy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one timed round after the warm-up (noisier, about 1 minute)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds per preset (default 3; 1 with --quick)")
    parser.add_argument("--presets", nargs="+", default=["lite", "fast", "official"],
                        choices=sorted(PRESETS),
                        help="presets to measure (default: lite fast official)")
    parser.add_argument("--official-window", type=int, default=DEFAULT_WINDOWS["official"],
                        help="window side for the official preset (default 1224; 2448 is its own)")
    parser.add_argument("--fast-window", type=int, default=None,
                        help="window side for the fast preset (default: its window_size)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--sub-batch", type=int, default=6,
                        help="patches / tiles per forward pass (default 6, as predict_window)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the baseline and mode 3 under bf16 autocast")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    # The first run of each case is the warm-up; medians are over the rest.
    windows = {"fast": args.fast_window, "official": args.official_window}

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows: list[str] = []
    descs: list[str] = []
    notes: list[str] = []
    busy: list[float] = []
    for name in args.presets:
        r, d, n, b = measure_preset(name, windows.get(name), args)
        busy += b
        rows += r
        descs += d
        notes += n
    threads = torch.get_num_threads()

    print(f"torch {torch.__version__}, {threads} threads, CPU: {cpu_model()}, "
          f"Python {platform.python_version()}")
    print()
    print("| preset | backbone | what | window px | patches per window (redundancy) "
          "| MP/s | vs baseline | cores busy |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(descs))
    print(f"- MP/s: window megapixels per second of wall time, model only (random normalised "
          f"window, random weights), median of {args.repeats} round(s) after one warm-up; "
          f"`torch.inference_mode()`, fp32 unless marked.")
    print("- GLNet mode M: `predict_window(model, window, mode=M)` with "
          "`GLNet(cfg, context_branch=True)`; 1 global only, 2 global→local + aggregation "
          "(every patch refined), 3 also local→global (the full network).")
    print("- baseline: the same backbone's single-branch ResNet-FPN (the global branch's "
          "plain path) at full resolution on non-overlapping patch-size tiles of the same "
          f"window, {args.sub_batch} tiles per pass, logits upsampled to the tile + softmax.")
    print("\n".join(notes))
    if args.bf16:
        print("- bf16 rows: `torch.autocast('cpu', dtype=torch.bfloat16)`, ratio against the bf16 "
              "baseline; the target is fp32.")
    print(f"- cores busy: CPU time / wall time; below {threads} means other processes competed "
          "for the CPU during the run.")
    if min(busy) < 0.9 * threads:
        print(f"- WARNING: cores busy fell to {min(busy):.1f} of {threads} outside mode 1: the "
              "CPU was shared during this run, so its times are pessimistic (GLNet's many small "
              "operations suffer more than the baseline); rerun on an idle machine.")
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
