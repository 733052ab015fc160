"""Training GLNet on scenes, stage by stage, with checkpoints, resume and a time budget.

Per stage: epochs of random windows from the training rectangles (flips and
90-degree rotations), Adam with a poly schedule, then validation on the
held-out rectangles in the stage's full inference mode (1: global only; 2:
global to local; 3: both directions). After every epoch a checkpoint is
written atomically beside the output (``MODEL.ckpt``); ``resume`` continues
from it. The model file at ``output`` always holds the best model so far by
validation mIoU; each stage starts from the best weights of the one before.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import parallel
from .config import DEFAULT_PRESET, StageConfig, TrainConfig, preset
from .datasets import Rect, TrainingScene, WindowSampler, augment, split_regions, tile_rect
from .errors import GlnetError, OptionError
from .files import atomic_output, remove_stale
from .glnet import GLNet
from .labels import IGNORE
from .metrics import ConfusionMatrix
from .modelfile import ClassInfo, ModelMeta, save_model
from .predict import predict_window
from .stages import make_optimizer, poly_factor, train_step
from .tensors import BandStatistics, check_device, to_tensor

CHECKPOINT_FORMAT = "glnet-qgis-checkpoint"
# Share of the time budget each stage gets; time a stage leaves over goes on.
BUDGET_SHARE = {1: 0.35, 2: 0.40, 3: 0.25}


@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` needs besides the data; defaults in one place.

    Attributes:
        preset: network preset (``config.PRESETS``).
        window_size, patch_size, global_size: override the preset's geometry
            (pixels). ``window_metres`` sets the window through the first
            scene's resolution instead.
        stages: which stages to run, in order.
        epochs, lr: per-stage overrides of ``loss.stages``.
        stage_lr: the learning rate of every stage not given in ``lr``. The
            released per-stage rates (``loss``: 1e-4, 2e-5, 5e-5) fine-tune
            branches over thousands of steps; in the hundreds of steps of a CPU
            budget the stage-2 rate leaves the local decoder and the
            aggregation conv (randomly initialised, pretrained trunks or not)
            almost untrained: from scratch (``benchmarks/accuracy.py``) and
            with pretrained trunks alike (demo scene, stage 2 at 2e-5 after a
            stage 1 at 0.676: validation mIoU 0.198). None keeps the released
            rates.
        windows_per_step: windows per optimiser step, per stage.
        windows_per_epoch: training windows per epoch (default: enough to cover
            the training area once).
        max_minutes: time budget for the whole run.
        val_fraction: right-hand share of each scene held out for validation.
        balance: favour windows with rare classes.
        seed: makes runs repeatable.
        backbone_weights: local torchvision ResNet ImageNet weights for both branches.
        pretrained: start both trunks from the ImageNet weights of an installed
            package (EfficientNet-Lite0, the ``lite`` preset). None: whenever
            the preset's trunk has such weights and ``backbone_weights`` is not
            given.
        freeze_bn: keep the pretrained trunks' BatchNorm statistics as they
            came (their scale and shift still train). A batch of one window in
            stage 1 gives statistics of one image; frozen ImageNet statistics do
            not depend on the batch. None: whenever the trunks are pretrained.
        steps: per-stage number of optimiser steps; replaces ``epochs`` for
            that stage (the last epoch is cut short). A budget in steps gives
            the same model on a slow or busy machine; ``max_minutes`` stays a cap.
        decoder_lr_factor: learning rate of the decoders and the aggregation
            conv relative to the trunks'. None: ``PRETRAINED_DECODER_LR_FACTOR``
            when the trunks are pretrained (the randomly initialised parts
            need larger steps than the pretrained ones may take), else
            ``loss.decoder_lr_factor``.
        coupling_weight: weight of the weak-coupling MSE in stage 2. None:
            ``PRETRAINED_COUPLING_WEIGHT`` when the trunks are pretrained, else
            ``loss.coupling_weight`` (the released 0.15).
        threads: torch CPU threads (default: torch's choice).
        device: ``cpu`` or ``cuda[:n]``; the model file is written the same either way.
        prefetch: make the next batch of windows on a thread during each step
            (same windows, same model). None: only on a GPU, where the step
            leaves the CPU idle; on 2 CPU cores the reader competes with torch's
            threads (``benchmarks/train_speed.py``: 0.91-1.01x on the CPU,
            1.22x on an H200).
        stats_windows: windows sampled to compute the band statistics.
        loss: losses, optimiser and per-stage defaults.
    """

    preset: str = DEFAULT_PRESET
    window_size: int | None = None
    window_metres: float | None = None
    patch_size: int | None = None
    global_size: int | None = None
    stages: tuple[int, ...] = (1, 2, 3)
    epochs: dict[int, int] = field(default_factory=dict)
    lr: dict[int, float] = field(default_factory=dict)
    stage_lr: float | None = 1e-4
    windows_per_step: dict[int, int] = field(default_factory=lambda: {1: 2, 2: 1, 3: 1})
    windows_per_epoch: int | None = None
    max_minutes: float | None = None
    val_fraction: float = 0.2
    balance: bool = False
    seed: int = 0
    backbone_weights: str | None = None
    pretrained: bool | None = None
    freeze_bn: bool | None = None
    steps: dict[int, int] = field(default_factory=dict)
    decoder_lr_factor: float | None = None
    coupling_weight: float | None = None
    threads: int | None = None
    device: str = "cpu"
    prefetch: bool | None = None
    stats_windows: int = 16
    loss: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check_options(self)


# Below this a ResNet trunk (stride 32) has no feature map left to segment.
MIN_SIZE = 32


def _check_options(o: TrainOptions) -> None:
    """Raise ``OptionError`` naming the first setting outside what it may be."""
    def whole(name: str, value, low: int) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < low):
            raise OptionError(f"{name} must be an integer of at least {low}, got {value!r}")

    def positive(name: str, value) -> None:
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                      and value > 0):
            raise OptionError(f"{name} must be a positive number, got {value!r}")

    for name in ("window_size", "patch_size", "global_size"):
        whole(name.replace("_", " "), getattr(o, name), MIN_SIZE)
    if o.patch_size and o.window_size and o.patch_size > o.window_size:
        raise OptionError(f"patch size {o.patch_size} is larger than the window {o.window_size}")
    for stage, epochs in o.epochs.items():
        whole(f"epochs of stage {stage}", epochs, 1)
    for stage, steps in o.steps.items():
        whole(f"steps of stage {stage}", steps, 1)
    for stage, lr in o.lr.items():
        positive(f"learning rate of stage {stage}", lr)
    for name in ("windows_per_epoch", "threads", "stats_windows"):
        whole(name.replace("_", " "), getattr(o, name), 1)
    whole("patches per window", o.loss.patches_per_window, 1)
    positive("window metres", o.window_metres)
    positive("max minutes", o.max_minutes)
    positive("decoder learning-rate factor", o.decoder_lr_factor)
    if o.coupling_weight is not None and not (isinstance(o.coupling_weight, (int, float))
                                              and math.isfinite(o.coupling_weight)
                                              and o.coupling_weight >= 0):
        raise OptionError(f"coupling weight must be 0 or more, got {o.coupling_weight!r}")
    if not (isinstance(o.val_fraction, (int, float)) and 0 <= o.val_fraction < 1):
        raise OptionError(f"validation fraction must be at least 0 and below 1, "
                          f"got {o.val_fraction!r}")


@dataclass
class TrainResult:
    """What a training run produced."""

    output: Path
    best_miou: float | None
    best_stage: int | None
    stages_done: tuple[int, ...]
    history: list[dict]
    minutes: float


def uses_packaged_weights(options: TrainOptions) -> bool:
    """Whether training starts both trunks from a package's ImageNet weights."""
    from .backbone import has_packaged_weights

    if options.pretrained is False or options.backbone_weights:
        return False
    packaged = has_packaged_weights(preset(options.preset).backbone)
    if options.pretrained and not packaged:
        raise GlnetError(f"preset {options.preset!r} has no packaged ImageNet weights; "
                         "use the lite preset or give backbone weights")
    return packaged


# Measured on the demo scene (README, "The model": validation mIoU after stages 1 and 2).
PRETRAINED_DECODER_LR_FACTOR = 10.0


def decoder_lr_factor(options: TrainOptions, pretrained: bool | None = None) -> float:
    """The decoders' learning rate relative to the trunks' for this run.

    ``pretrained``: whether the trunks are (None: decided from ``options``).
    """
    if options.decoder_lr_factor is not None:
        return options.decoder_lr_factor
    if pretrained is None:
        pretrained = is_pretrained(options)
    return PRETRAINED_DECODER_LR_FACTOR if pretrained else options.loss.decoder_lr_factor


# The weak coupling pulls the local branch towards the global one; from
# pretrained trunks at a CPU budget it only holds the local branch back
# (benchmarks/accuracy.py, synthetic trial scenes, GLNet 100+700+100 steps:
# mIoU 0.846 with 0.15, 0.867 with 0).
PRETRAINED_COUPLING_WEIGHT = 0.0


def coupling_weight(options: TrainOptions, pretrained: bool | None = None) -> float:
    """The weak-coupling weight of stage 2 for this run (``pretrained`` as above)."""
    if options.coupling_weight is not None:
        return options.coupling_weight
    if pretrained is None:
        pretrained = is_pretrained(options)
    return PRETRAINED_COUPLING_WEIGHT if pretrained else options.loss.coupling_weight


def is_pretrained(options: TrainOptions) -> bool:
    return bool(options.backbone_weights) or uses_packaged_weights(options)


def build_meta(scenes: Sequence[TrainingScene], classes: Sequence[ClassInfo], options: TrainOptions,
               log: Callable[[str], None]) -> ModelMeta:
    """The model's metadata: network geometry for these scenes and their band statistics."""
    first = scenes[0]
    overrides = dict(in_channels=len(first.bands), num_classes=len(classes))
    base = preset(options.preset)
    window = options.window_size
    if options.window_metres is not None:
        if first.resolution is None:
            raise GlnetError(f"{first.path}: no projected CRS, so the window cannot be given in metres")
        window = max(32, round(options.window_metres / first.resolution))
    if window is not None:
        overrides["window_size"] = window
    win = overrides.get("window_size", base.window_size)
    if options.patch_size and options.patch_size > win:
        raise OptionError(f"patch size {options.patch_size} is larger than the window {win}")
    if len(classes) < 2:
        raise GlnetError(f"{first.path}: only one class to learn ({classes[0].name if classes else '-'}); "
                         "there is nothing to tell it from (label the rest as background)")
    overrides["patch_size"] = min(options.patch_size or base.patch_size, win)
    overrides["global_size"] = min(options.global_size or base.global_size, win)
    overrides["min_overlap"] = min(base.min_overlap, overrides["patch_size"] // 4)
    net = replace(base, **overrides)
    mean, std = _band_statistics(scenes, net.window_size, options, len(classes))
    extra = {}
    if uses_packaged_weights(options):
        mean, std = trunk_scaling(first.dtype, mean, std)
        extra["trunk_init"] = trunk_init_note(net)
    descriptions = first.ds.descriptions or (None,) * first.ds.count
    names = [descriptions[b - 1] or f"band {b}" for b in first.bands]
    return ModelMeta(net=net, classes=tuple(classes), bands=tuple(names), dtype=first.dtype,
                     mean=mean, std=std, resolution=first.resolution, stages=(),
                     preset=options.preset, ignore_index=IGNORE,
                     notes=f"trained on {', '.join(s.name for s in scenes[:5])}"
                           f"{' ...' if len(scenes) > 5 else ''}", extra=extra)


def trunk_scaling(dtype: str, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input scaling in raw units that gives a pretrained trunk the inputs it was trained on.

    EfficientNet-Lite's ImageNet weights take ``(x / 255 - 0.5) / 0.5``: for
    8-bit bands that is mean = std = 127.5. Other data types have no fixed
    range, so the scene's own statistics are used with the standard deviation
    doubled, which gives the same spread (about 0.5 x 2 = 1 per unit of the
    [-1, 1] range) around the scene's mean.
    """
    from .efficientnet import LITE0_WEIGHTS

    if dtype == "uint8":
        w = LITE0_WEIGHTS
        m, s = float(np.mean(w.mean)) * 255.0, float(np.mean(w.std)) * 255.0
        return (m,) * len(mean), (s,) * len(std)
    return tuple(mean), tuple(2.0 * v for v in std)


def trunk_init_note(net) -> dict:
    """How the trunks were initialised, as recorded in the model file's metadata."""
    from .efficientnet import LITE0_WEIGHTS

    w = LITE0_WEIGHTS
    bands = net.in_channels
    first = ("RGB filters" if bands == 3 else
             f"RGB filters cycled over {bands} bands (R, G, B, R, ...), scaled by 3/{bands}")
    return {"weights": f"ImageNet, {w.package} {Path(w.filename).name}", "sha256": w.sha256,
            "first_conv": first}


def _band_statistics(scenes, window, options, num_classes):
    rng = np.random.default_rng(options.seed + 7919)
    regions = [Rect(i, 0, 0, s.height, s.width) for i, s in enumerate(scenes)]
    sampler = WindowSampler(scenes, regions, window, num_classes)
    stats = BandStatistics(len(scenes[0].bands))
    for _ in range(options.stats_windows):
        rect = sampler.candidate(rng)
        image, _, valid = scenes[rect.scene].read(rect.window())
        stats.update(image, valid)
    try:
        return stats.result()
    except ValueError:
        raise GlnetError(f"{scenes[0].path}: no valid (non-nodata) pixels found") from None


def evaluate_windows(model: GLNet, meta: ModelMeta, scenes: Sequence[TrainingScene],
                     windows: Sequence[Rect], mode: int) -> ConfusionMatrix:
    """Confusion matrix of ``model`` (inference ``mode``) on labelled ``windows``."""
    n = meta.net.num_classes
    conf = ConfusionMatrix(n)
    model.eval()
    device = next(model.parameters()).device
    for rect in windows:
        image, labels, valid = scenes[rect.scene].read(rect.window(), n)
        x = to_tensor(image, meta.mean, meta.std, valid).to(device)
        pred = predict_window(model, x, mode=mode).probabilities.argmax(0).cpu().numpy()
        conf.update(pred, labels, labels != IGNORE)
    return conf


class Prefetcher:
    """Makes the next batches of training windows on a thread while the model trains.

    Reading and decompressing windows (GDAL lets go of the GIL) and augmenting
    them overlaps the optimiser step. ``make`` is called ``count`` times, in
    order, on one thread, and draws from ``rng``; at most two batches are made
    ahead. ``close`` stops the thread and puts ``rng`` back to its state before
    the first batch that was not taken, so a run that stops early (time budget,
    cancellation) goes on with the draws a run without prefetching would make.
    Only one thread touches the scenes at a time: the consumer must not read
    them between creating and closing a prefetcher.
    """

    def __init__(self, make: Callable[[], list], rng: np.random.Generator, count: int) -> None:
        self._rng = rng
        self._states: list[dict] = []  # rng state before each batch the thread started
        self._taken = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, count), daemon=True,
                                        name="glnet-train-windows")
        self._thread.start()

    def _run(self, make, count: int) -> None:
        for _ in range(count):
            if self._stop.is_set():
                return
            self._states.append(copy.deepcopy(self._rng.bit_generator.state))
            try:
                item = (make(), None)
            except BaseException as exc:  # handed to the consumer, raised there
                item = (None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[1] is not None:
                return

    def next(self) -> list:
        """The next batch (raises what ``make`` raised)."""
        batch, exc = self._queue.get()
        self._taken += 1
        if exc is not None:
            raise exc
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if len(self._states) > self._taken:
            self._rng.bit_generator.state = self._states[self._taken]


class _Inline:
    """``Prefetcher``'s interface without a thread: each batch is made when asked for."""

    def __init__(self, make: Callable[[], list]) -> None:
        self.next = make

    def close(self) -> None:
        pass


def checkpoint_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".ckpt")


def train(scenes: Sequence[TrainingScene], classes: Sequence[ClassInfo], output: str | Path,
          options: TrainOptions = TrainOptions(), resume: bool = False,
          log: Callable[[str], None] = print,
          progress: Callable[[float], None] | None = None) -> TrainResult:
    """Train a GLNet on ``scenes`` and write the best model to ``output``.

    ``log`` receives one line per epoch; ``progress`` the fraction of all
    planned steps done (called after every step; it may raise to cancel).
    """
    ranks = parallel.from_env()
    try:
        return _train(scenes, classes, output, options, resume, log, progress, ranks)
    finally:
        ranks.close()


def _train(scenes, classes, output, options: TrainOptions, resume: bool, log, progress,
           ranks: parallel.Ranks) -> TrainResult:
    output = Path(output)
    ckpt_path = checkpoint_path(output)
    if not ranks.main:
        log, progress = (lambda text: None), None
    # Temporary files of a run that was killed (SIGKILL leaves no chance to clean up).
    if ranks.main:
        remove_stale(output)
        remove_stale(ckpt_path)
    # What is at ``output`` now the caller let us replace; a file that appears
    # there later is another run's (files.atomic_output refuses it).
    replace_output = output.exists()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = check_device(options.device)
    if ranks.active and device.type != "cpu":
        raise GlnetError("training in several processes (torchrun) runs on the CPU only; "
                         "leave out --device")
    torch.manual_seed(options.seed)
    # Rank 0 draws the windows a single process would; the others their own.
    rng = np.random.default_rng(options.seed if ranks.main else [options.seed, ranks.rank])
    start_time = time.monotonic()

    state = None
    if resume:
        state = _load_checkpoint(ckpt_path)
        meta = ModelMeta.from_json(state["meta"])
        if meta.classes != tuple(classes) or meta.net.in_channels != len(scenes[0].bands):
            raise GlnetError(f"{ckpt_path}: checkpoint was made for other classes or bands")
        _check_resume(ckpt_path, state, options)
    else:
        meta = build_meta(scenes, classes, options, log)

    net = meta.net
    train_rects, val_rects = split_regions(scenes, options.val_fraction)
    sampler = WindowSampler(scenes, train_rects, net.window_size, net.num_classes, options.balance)
    val_windows = [w for r in val_rects for w in tile_rect(r, net.window_size)]
    per_epoch = options.windows_per_epoch or sampler.windows_per_epoch()
    if not val_windows:
        log("no validation area (scene too small or --val-fraction 0): keeping the last model")

    model = GLNet(net)
    pretrained = is_pretrained(options)
    if options.backbone_weights and state is None:
        from .backbone import load_imagenet_weights

        load_imagenet_weights(model.global_backbone, options.backbone_weights)
    elif uses_packaged_weights(options) and state is None:
        from .backbone import load_packaged_weights

        load_packaged_weights(model.global_backbone)
    if pretrained and state is None:
        # Both branches start from the same weights: read (and hash) the file once.
        model.local_backbone.load_state_dict(model.global_backbone.state_dict())
    model.frozen_trunk_statistics = (options.freeze_bn if options.freeze_bn is not None
                                     else pretrained)
    model.to(device)

    stages = tuple(options.stages)
    # The losses' settings that follow from the trunks, decided once for all stages.
    loss = replace(options.loss, decoder_lr_factor=decoder_lr_factor(options, pretrained),
                   coupling_weight=coupling_weight(options, pretrained))
    history: list[dict] = []
    best = {"miou": -1.0, "stage": None}
    done: tuple[int, ...] = ()
    elapsed0 = 0.0
    pos = {"stage_index": 0, "epoch": 0}
    stage_best: dict | None = None
    if state is not None:
        if state["has_context"]:
            model.add_context_branch()
        model.load_state_dict(state["model"])
        history = json.loads(state["history"])
        best = json.loads(state["best"])
        done = tuple(state["done"])
        elapsed0 = float(state["elapsed"])
        pos = json.loads(state["pos"])
        stage_best = {"miou": float(state["stage_best_miou"]), "state": state["stage_best_state"]}
        rng.bit_generator.state = json.loads(state["rng"])
        if not ranks.main:
            rng = np.random.default_rng([options.seed, ranks.rank, pos["stage_index"],
                                         pos["epoch"]])
        torch.set_rng_state(state["torch_rng"])
        log(f"resuming from {ckpt_path}: stage {stages[pos['stage_index']] if pos['stage_index'] < len(stages) else '-'}, "
            f"epoch {pos['epoch'] + 1}")

    budget = options.max_minutes * 60 if options.max_minutes else None
    def stage_steps(s: int) -> tuple[int, int]:
        """(steps per epoch, steps in all) of stage ``s``."""
        per = max(1, math.ceil(per_epoch / options.windows_per_step.get(s, 1)))
        if s in options.steps:
            return per, options.steps[s]
        return per, per * options.epochs.get(s, options.loss.stages.get(s, StageConfig(10, 1e-4)).epochs)

    planned = {s: stage_steps(s)[1] for s in stages}
    total_planned = sum(planned.values())

    def elapsed() -> float:
        return elapsed0 + time.monotonic() - start_time

    for si in range(pos["stage_index"], len(stages)):
        stage = stages[si]
        cfg = loss
        stage_cfg = cfg.stages.get(stage, StageConfig(epochs=10, lr=1e-4))
        steps_per_epoch, total_steps = stage_steps(stage)
        epochs = math.ceil(total_steps / steps_per_epoch)
        default_lr = options.stage_lr or stage_cfg.lr
        lr = options.lr.get(stage, default_lr)
        cfg = replace(cfg, stages={**cfg.stages, stage: StageConfig(epochs=epochs, lr=lr)})
        model.set_stage(stage)
        ranks.broadcast_state(model)
        optimizer = make_optimizer(model, stage, cfg)
        if ranks.active:
            optimizer = parallel.AveragingOptimizer(optimizer, model, ranks)
        first_epoch = pos["epoch"] if si == pos["stage_index"] else 0
        if state is not None and si == pos["stage_index"] and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if si != pos["stage_index"] or state is None:
            stage_best = {"miou": -1.0, "state": None}
        batch = options.windows_per_step.get(stage, 1)
        stage_deadline = None
        if budget is not None:
            left = budget - elapsed()
            share = BUDGET_SHARE.get(stage, 0.3) / sum(BUDGET_SHARE.get(s, 0.3) for s in stages[si:])
            stage_deadline = elapsed() + max(0.0, left) * share
        mode = {1: 1, 2: 2, 3: 3}[stage]
        def make_batch(batch=batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
            windows = []
            for _ in range(batch):
                rect = sampler.draw(rng)
                image, labels, valid = scenes[rect.scene].read(rect.window(), net.num_classes)
                image, labels, valid = augment(image, labels, rng, valid)
                windows.append((to_tensor(image, meta.mean, meta.std, valid),
                                torch.from_numpy(labels)[None]))
            return windows

        for epoch in range(first_epoch, epochs):
            losses = []
            out_of_time = False
            prefetch = options.prefetch if options.prefetch is not None else device.type != "cpu"
            epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            batches = (Prefetcher(make_batch, rng, epoch_steps) if prefetch
                       else _Inline(make_batch))
            try:
                for k in range(epoch_steps):
                    step = epoch * steps_per_epoch + k
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * poly_factor(step, total_steps, cfg.poly_power)
                    windows = [(x.to(device), y.to(device)) for x, y in batches.next()]
                    result = train_step(model, windows, optimizer, cfg)
                    losses.append(result.total)
                    if progress is not None:
                        before = sum(planned[s] for s in stages[:si])
                        progress(min(1.0, (before + step + 1) / total_planned))
                    if ranks.any(stage_deadline is not None and elapsed() >= stage_deadline):
                        out_of_time = True
                        break
            finally:
                batches.close()
            record = {"stage": stage, "epoch": epoch + 1, "loss": float(np.mean(losses)),
                      "steps": len(losses), "minutes": round(elapsed() / 60, 2)}
            if val_windows and ranks.main:
                conf = evaluate_windows(model, meta, scenes, val_windows, mode)
                record["val_miou"] = conf.miou()
                record["val_accuracy"] = conf.overall_accuracy()
            history.append(record)
            log(_format_record(record))
            miou = ranks.from_main(record.get("val_miou", -0.5))
            # NaN: the validation area has no labelled pixel, so no epoch can be
            # scored; like no validation area at all, the last model is kept.
            unscored = not val_windows or math.isnan(miou)
            if unscored and val_windows and not math.isnan(best["miou"]):
                log("no labelled pixels in the validation area (validation mIoU undefined): "
                    "keeping the last model")
            if miou > stage_best["miou"] or unscored:
                stage_best = {"miou": miou, "state": copy.deepcopy(model.state_dict())}
            stage_done = done + ((stage,) if stage not in done else ())
            if miou > best["miou"] or unscored:
                best = {"miou": miou, "stage": stage, "epoch": epoch + 1}
                if ranks.main:
                    save_model(model, replace(meta, stages=tuple(sorted(stage_done))), output,
                               overwrite=replace_output)
                    replace_output = True
            last = out_of_time or epoch == epochs - 1
            if ranks.main:
                _save_checkpoint(ckpt_path, options, meta, model, optimizer if not last else None,
                                 history,
                                 best, done if not last else stage_done,
                                 {"stage_index": si + 1 if last else si,
                                  "epoch": 0 if last else epoch + 1},
                                 stage_best, rng, elapsed())
            if out_of_time:
                log(f"stage {stage}: time budget used after {epoch + 1} epoch(s)")
                break
        # The next stage starts from this stage's best weights.
        if stage_best["state"] is not None:
            model.load_state_dict(stage_best["state"])
        done = done + ((stage,) if stage not in done else ())
        state = None

    ranks.check_identical(model)
    best_miou = best["miou"] if best["miou"] >= 0 else None
    return TrainResult(output, best_miou, best["stage"], done, history, elapsed() / 60)


def _format_record(r: dict) -> str:
    text = f"stage {r['stage']} epoch {r['epoch']}: loss {r['loss']:.4f} ({r['steps']} steps)"
    if "val_miou" in r:
        text += f", validation mIoU {r['val_miou']:.4f}, accuracy {r['val_accuracy']:.4f}"
    return text + f" [{r['minutes']:.1f} min]"


# Settings a resumed run may change: they do not alter what the run computes.
_RESUMABLE = ("max_minutes", "threads", "device", "prefetch", "backbone_weights")


def _run_options(options: TrainOptions) -> dict:
    """The settings that shape a run, as JSON values (what a checkpoint records)."""
    from dataclasses import asdict

    d = {k: v for k, v in asdict(options).items() if k not in _RESUMABLE}
    return json.loads(json.dumps(d, sort_keys=True))


def _check_resume(path: Path, state: dict, options: TrainOptions) -> None:
    """Refuse to resume with other settings, or a run that already finished."""
    recorded = state.get("options")  # checkpoints from before it was recorded have none
    if recorded is not None:
        now = _run_options(options)
        then = json.loads(recorded)
        changed = sorted(k for k in now if now[k] != then.get(k))
        if changed:
            raise GlnetError(f"{path}: the checkpoint was made with other settings "
                             f"({', '.join(changed).replace('_', ' ')}); resume with the same "
                             "options, or train anew with --overwrite")
    if json.loads(state["pos"])["stage_index"] >= len(options.stages):
        raise GlnetError(f"{path}: the run it records has finished (stages "
                         f"{', '.join(map(str, state['done']))}); nothing to resume")


def _save_checkpoint(path, options, meta, model, optimizer, history, best, done, pos, stage_best,
                     rng, elapsed):
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "meta": meta.to_json(),
        "options": json.dumps(_run_options(options)),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "has_context": model.has_context_branch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "history": json.dumps(history), "best": json.dumps(best), "done": list(done),
        "pos": json.dumps(pos), "stage_best_miou": float(stage_best["miou"]),
        "stage_best_state": stage_best["state"], "rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(), "elapsed": float(elapsed),
    }
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path) -> dict:
    import pickle

    if not path.exists():
        raise GlnetError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise GlnetError(f"{path}: refused: not a plain checkpoint (it would run code)") from None
    except Exception as exc:
        raise GlnetError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise GlnetError(f"{path}: not a glnet training checkpoint")
    return state
