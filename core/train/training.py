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
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..config import MIN_SIZE, StageConfig, TrainConfig, TrainOptions, preset
from ..errors import GlnetError, OptionError
from ..files import atomic_output, remove_stale
from ..metrics import ConfusionMatrix
from ..modelfile import ClassInfo, ModelMeta, save_model
from ..nn.glnet import GLNet
from ..nn.predict import predict_window
from ..raster.labels import IGNORE
from ..raster.tensors import BandStatistics, check_device, to_tensor, torch_threads
from . import parallel
from .datasets import Rect, TrainingScene, WindowSampler, augment, split_regions, tile_rect
from .stages import make_optimizer, poly_factor, train_step

CHECKPOINT_FORMAT = "glnet-qgis-checkpoint"
# Share of the time budget each stage gets; time a stage leaves over goes on.
BUDGET_SHARE = {1: 0.35, 2: 0.40, 3: 0.25}


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
    from ..nn.backbone import has_packaged_weights

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


def build_meta(scenes: Sequence[TrainingScene], classes: Sequence[ClassInfo],
               options: TrainOptions) -> ModelMeta:
    """The model's metadata: network geometry for these scenes and their band statistics."""
    first = scenes[0]
    overrides = dict(in_channels=len(first.bands), num_classes=len(classes))
    base = preset(options.preset)
    window = options.window_size
    if options.window_metres is not None:
        if first.resolution is None:
            raise GlnetError(f"{first.path}: no projected CRS, so the window cannot be given in metres")
        window = max(MIN_SIZE, round(options.window_metres / first.resolution))
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
    from ..nn.efficientnet import LITE0_WEIGHTS

    if dtype == "uint8":
        w = LITE0_WEIGHTS
        m, s = float(np.mean(w.mean)) * 255.0, float(np.mean(w.std)) * 255.0
        return (m,) * len(mean), (s,) * len(std)
    return tuple(mean), tuple(2.0 * v for v in std)


def trunk_init_note(net) -> dict:
    """How the trunks were initialised, as recorded in the model file's metadata."""
    from ..nn.efficientnet import LITE0_WEIGHTS

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
          options: TrainOptions | None = None, resume: bool = False,
          log: Callable[[str], None] = print,
          progress: Callable[[float], None] | None = None) -> TrainResult:
    """Train a GLNet on ``scenes`` and write the best model to ``output``.

    ``log`` receives one line per epoch; ``progress`` the fraction of all
    planned steps done (called after every step; it may raise to cancel).
    ``options.threads`` and the seeding of torch's random generators hold
    for the run only: both are as they were when ``train`` returns.
    """
    options = options or TrainOptions()
    ranks = parallel.from_env()
    try:
        return _train(scenes, classes, Path(output), options, resume, log, progress, ranks)
    finally:
        ranks.close()


@dataclass
class _Best:
    """The best validation score so far: the model at ``output`` scored it."""

    miou: float = -1.0
    stage: int | None = None
    epoch: int | None = None


@dataclass
class _StageBest:
    """The current stage's best score and weights, which the next stage starts from."""

    miou: float = -1.0
    state: dict | None = None


@dataclass
class _Position:
    """Where a run goes on: the index of a stage in ``options.stages`` and an epoch of it."""

    stage_index: int = 0
    epoch: int = 0


@dataclass
class _Run:
    """A training run: what is set up once, and the state its epochs advance.

    Everything a checkpoint records (``_save_checkpoint``) is here, so that a
    resumed run (``_restore``) is the same object as one that never stopped.
    """

    options: TrainOptions
    scenes: Sequence[TrainingScene]
    output: Path
    meta: ModelMeta
    model: GLNet
    device: torch.device
    ranks: parallel.Ranks
    loss: TrainConfig           # the losses' settings, decided once from the trunks
    sampler: WindowSampler
    val_windows: list[Rect]
    per_epoch: int              # training windows per epoch
    rng: np.random.Generator
    log: Callable[[str], None]
    progress: Callable[[float], None] | None
    replace_output: bool        # whether what is at ``output`` may be replaced
    start_time: float
    elapsed0: float = 0.0       # seconds spent by the runs this one resumes
    history: list[dict] = field(default_factory=list)
    best: _Best = field(default_factory=_Best)
    done: tuple[int, ...] = ()
    pos: _Position = field(default_factory=_Position)
    stage_best: _StageBest = field(default_factory=_StageBest)
    state: dict | None = None   # the checkpoint resumed from, until its stage is set up

    @property
    def ckpt_path(self) -> Path:
        return checkpoint_path(self.output)

    @property
    def stages(self) -> tuple[int, ...]:
        return tuple(self.options.stages)

    def elapsed(self) -> float:
        return self.elapsed0 + time.monotonic() - self.start_time

    def stage_steps(self, s: int) -> tuple[int, int]:
        """(steps per epoch, steps in all) of stage ``s``."""
        o = self.options
        per = max(1, math.ceil(self.per_epoch / o.windows_per_step.get(s, 1)))
        if s in o.steps:
            return per, o.steps[s]
        return per, per * o.epochs.get(s, o.loss.stages.get(s, StageConfig(10, 1e-4)).epochs)

    def result(self) -> TrainResult:
        best_miou = self.best.miou if self.best.miou >= 0 else None
        return TrainResult(self.output, best_miou, self.best.stage, self.done, self.history,
                           self.elapsed() / 60)


@dataclass
class _Stage:
    """One stage of a run: its settings and its optimiser."""

    index: int                  # in ``options.stages``
    stage: int
    cfg: TrainConfig            # the run's losses with this stage's epochs and learning rate
    steps_per_epoch: int
    total_steps: int
    epochs: int
    first_epoch: int
    optimizer: object
    deadline: float | None      # elapsed seconds at which the stage's share of the budget is used
    make_batch: Callable[[], list]


def _train(scenes, classes, output: Path, options: TrainOptions, resume: bool, log, progress,
           ranks: parallel.Ranks) -> TrainResult:
    if not ranks.main:
        log, progress = (lambda text: None), None
    else:
        _remove_stale_parts(output)
    # What is at ``output`` now the caller let us replace; a file that appears
    # there later is another run's (files.atomic_output refuses it).
    replace_output = output.exists()
    with torch_threads(options.threads):
        device = check_device(options.device)
        if ranks.active and device.type != "cpu":
            raise GlnetError("training in several processes (torchrun) runs on the CPU only; "
                             "leave out --device")
        with _own_torch_rng(device):
            torch.manual_seed(options.seed)
            run = _start(scenes, classes, output, options, resume, log, progress, ranks, device,
                         replace_output)
            for si in range(run.pos.stage_index, len(run.stages)):
                _train_stage(run, si)
            ranks.check_identical(run.model)
            return run.result()


def _remove_stale_parts(output: Path) -> None:
    """Temporary files of a run that was killed (SIGKILL leaves no chance to clean up)."""
    remove_stale(output)
    remove_stale(checkpoint_path(output))


def _own_torch_rng(device: torch.device):
    """A block after which torch's random generators are as they were before it.

    The run seeds them (initial weights, the draws of training steps); the
    caller's own draws go on as if it had not run. On a GPU its generators
    are kept too.
    """
    return torch.random.fork_rng(
        devices=range(torch.cuda.device_count()) if device.type == "cuda" else ())


def _start(scenes, classes, output: Path, options: TrainOptions, resume: bool, log, progress,
           ranks: parallel.Ranks, device: torch.device, replace_output: bool) -> _Run:
    """The run before its first step: metadata, data, model, and the state resumed from."""
    # Rank 0 draws the windows a single process would; the others their own.
    rng = np.random.default_rng(options.seed if ranks.main else [options.seed, ranks.rank])
    start_time = time.monotonic()
    ckpt_path = checkpoint_path(output)
    state = None
    if resume:
        state = _load_checkpoint(ckpt_path)
        meta = ModelMeta.from_json(state["meta"])
        if meta.classes != tuple(classes) or meta.net.in_channels != len(scenes[0].bands):
            raise GlnetError(f"{ckpt_path}: checkpoint was made for other classes or bands")
        _check_resume(ckpt_path, state, options)
    else:
        meta = build_meta(scenes, classes, options)

    net = meta.net
    train_rects, val_rects = split_regions(scenes, options.val_fraction)
    sampler = WindowSampler(scenes, train_rects, net.window_size, net.num_classes, options.balance)
    val_windows = [w for r in val_rects for w in tile_rect(r, net.window_size)]
    per_epoch = options.windows_per_epoch or sampler.windows_per_epoch()
    if not val_windows:
        log("no validation area (scene too small or --val-fraction 0): keeping the last model")

    model, pretrained = _new_model(net, options, device, initialise=state is None)
    # The losses' settings that follow from the trunks, decided once for all stages.
    loss = replace(options.loss, decoder_lr_factor=decoder_lr_factor(options, pretrained),
                   coupling_weight=coupling_weight(options, pretrained))
    run = _Run(options, scenes, output, meta, model, device, ranks, loss, sampler, val_windows,
               per_epoch, rng, log, progress, replace_output, start_time)
    if state is not None:
        _restore(run, state)
    return run


def _new_model(net, options: TrainOptions, device: torch.device,
               initialise: bool) -> tuple[GLNet, bool]:
    """The network on ``device`` and whether its trunks are pretrained.

    ``initialise``: load the pretrained trunks' weights (a resumed run loads
    its own weights instead).
    """
    model = GLNet(net)
    pretrained = is_pretrained(options)
    if options.backbone_weights and initialise:
        from ..nn.backbone import load_imagenet_weights

        load_imagenet_weights(model.global_backbone, options.backbone_weights)
    elif uses_packaged_weights(options) and initialise:
        from ..nn.backbone import load_packaged_weights

        load_packaged_weights(model.global_backbone)
    if pretrained and initialise:
        # Both branches start from the same weights: read (and hash) the file once.
        model.local_backbone.load_state_dict(model.global_backbone.state_dict())
    model.frozen_trunk_statistics = (options.freeze_bn if options.freeze_bn is not None
                                     else pretrained)
    model.to(device)
    return model, pretrained


def _restore(run: _Run, state: dict) -> None:
    """Put ``run`` where the checkpoint ``state`` left it."""
    if state["has_context"]:
        run.model.add_context_branch()
    run.model.load_state_dict(state["model"])
    run.history = json.loads(state["history"])
    run.best = _Best(**json.loads(state["best"]))
    run.done = tuple(state["done"])
    run.elapsed0 = float(state["elapsed"])
    run.pos = _Position(**json.loads(state["pos"]))
    run.stage_best = _StageBest(float(state["stage_best_miou"]), state["stage_best_state"])
    run.rng.bit_generator.state = json.loads(state["rng"])
    if not run.ranks.main:
        run.rng = np.random.default_rng([run.options.seed, run.ranks.rank, run.pos.stage_index,
                                         run.pos.epoch])
    torch.set_rng_state(state["torch_rng"])
    run.state = state
    stages, si = run.stages, run.pos.stage_index
    run.log(f"resuming from {run.ckpt_path}: stage {stages[si] if si < len(stages) else '-'}, "
            f"epoch {run.pos.epoch + 1}")


def _train_stage(run: _Run, si: int) -> None:
    """Stage ``stages[si]`` from where the run stands; the run goes on from its best weights."""
    st = _setup_stage(run, si)
    for epoch in range(st.first_epoch, st.epochs):
        record, out_of_time = _train_epoch(run, st, epoch)
        _end_epoch(run, st, epoch, record, last=out_of_time or epoch == st.epochs - 1)
        if out_of_time:
            run.log(f"stage {st.stage}: time budget used after {epoch + 1} epoch(s)")
            break
    # The next stage starts from this stage's best weights.
    if run.stage_best.state is not None:
        run.model.load_state_dict(run.stage_best.state)
    run.done = _with_stage(run.done, st.stage)
    run.state = None


def _setup_stage(run: _Run, si: int) -> _Stage:
    """Stage ``stages[si]``'s schedule, optimiser and share of the time budget."""
    options, model = run.options, run.model
    stage = run.stages[si]
    stage_cfg = run.loss.stages.get(stage, StageConfig(epochs=10, lr=1e-4))
    steps_per_epoch, total_steps = run.stage_steps(stage)
    epochs = math.ceil(total_steps / steps_per_epoch)
    lr = options.lr.get(stage, options.stage_lr or stage_cfg.lr)
    cfg = replace(run.loss, stages={**run.loss.stages, stage: StageConfig(epochs=epochs, lr=lr)})
    model.set_stage(stage)
    run.ranks.broadcast_state(model)
    optimizer = make_optimizer(model, stage, cfg)
    if run.ranks.active:
        optimizer = parallel.AveragingOptimizer(optimizer, model, run.ranks)
    # A resumed run's first stage is the one its checkpoint left off in.
    resumed = run.state is not None
    if resumed and run.state.get("optimizer") is not None:
        optimizer.load_state_dict(run.state["optimizer"])
    if not resumed:
        run.stage_best = _StageBest()
    deadline = None
    if options.max_minutes:
        left = options.max_minutes * 60 - run.elapsed()
        share = BUDGET_SHARE.get(stage, 0.3) / sum(BUDGET_SHARE.get(s, 0.3)
                                                   for s in run.stages[si:])
        deadline = run.elapsed() + max(0.0, left) * share
    batch = partial(_make_batch, run, options.windows_per_step.get(stage, 1))
    return _Stage(si, stage, cfg, steps_per_epoch, total_steps, epochs,
                  run.pos.epoch if resumed else 0, optimizer, deadline, batch)


def _make_batch(run: _Run, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``size`` augmented training windows, drawn with the run's generator, as tensors."""
    windows = []
    for _ in range(size):
        rect = run.sampler.draw(run.rng)
        image, labels, valid = run.scenes[rect.scene].read(rect.window(), run.meta.net.num_classes)
        image, labels, valid = augment(image, labels, run.rng, valid)
        windows.append((to_tensor(image, run.meta.mean, run.meta.std, valid),
                        torch.from_numpy(labels)[None]))
    return windows


def _train_epoch(run: _Run, st: _Stage, epoch: int) -> tuple[dict, bool]:
    """The optimiser steps of one epoch: its record, and whether the time budget ran out."""
    options, device = run.options, run.device
    prefetch = options.prefetch if options.prefetch is not None else device.type != "cpu"
    epoch_steps = min(st.steps_per_epoch, st.total_steps - epoch * st.steps_per_epoch)
    batches = (Prefetcher(st.make_batch, run.rng, epoch_steps) if prefetch
               else _Inline(st.make_batch))
    planned = {s: run.stage_steps(s)[1] for s in run.stages}
    before, total_planned = sum(planned[s] for s in run.stages[:st.index]), sum(planned.values())
    losses = []
    out_of_time = False
    try:
        for k in range(epoch_steps):
            step = epoch * st.steps_per_epoch + k
            for group in st.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * poly_factor(step, st.total_steps,
                                                                st.cfg.poly_power)
            windows = [(x.to(device), y.to(device)) for x, y in batches.next()]
            losses.append(train_step(run.model, windows, st.optimizer, st.cfg).total)
            if run.progress is not None:
                run.progress(min(1.0, (before + step + 1) / total_planned))
            if run.ranks.any(st.deadline is not None and run.elapsed() >= st.deadline):
                out_of_time = True
                break
    finally:
        batches.close()
    record = {"stage": st.stage, "epoch": epoch + 1, "loss": float(np.mean(losses)),
              "steps": len(losses), "minutes": round(run.elapsed() / 60, 2)}
    return record, out_of_time


def _end_epoch(run: _Run, st: _Stage, epoch: int, record: dict, last: bool) -> None:
    """Validate the epoch's model, write it if it is the best so far, and checkpoint the run.

    ``last``: the stage ends with this epoch.
    """
    if run.val_windows and run.ranks.main:
        conf = evaluate_windows(run.model, run.meta, run.scenes, run.val_windows, st.stage)
        record["val_miou"] = conf.miou()
        record["val_accuracy"] = conf.overall_accuracy()
    run.history.append(record)
    run.log(_format_record(record))
    miou = run.ranks.from_main(record.get("val_miou", -0.5))
    # NaN: the validation area has no labelled pixel, so no epoch can be
    # scored; like no validation area at all, the last model is kept.
    unscored = not run.val_windows or math.isnan(miou)
    if unscored and run.val_windows and not math.isnan(run.best.miou):
        run.log("no labelled pixels in the validation area (validation mIoU undefined): "
                "keeping the last model")
    if miou > run.stage_best.miou or unscored:
        run.stage_best = _StageBest(miou, copy.deepcopy(run.model.state_dict()))
    stage_done = _with_stage(run.done, st.stage)
    if miou > run.best.miou or unscored:
        run.best = _Best(miou, st.stage, epoch + 1)
        if run.ranks.main:
            save_model(run.model, replace(run.meta, stages=tuple(sorted(stage_done))), run.output,
                       overwrite=run.replace_output)
            run.replace_output = True
    if run.ranks.main:
        _save_checkpoint(run, st.optimizer if not last else None,
                         done=stage_done if last else run.done,
                         pos=_Position(st.index + 1, 0) if last else _Position(st.index, epoch + 1))


def _with_stage(done: tuple[int, ...], stage: int) -> tuple[int, ...]:
    return done + ((stage,) if stage not in done else ())


def _format_record(r: dict) -> str:
    text = f"stage {r['stage']} epoch {r['epoch']}: loss {r['loss']:.4f} ({r['steps']} steps)"
    if "val_miou" in r:
        text += f", validation mIoU {r['val_miou']:.4f}, accuracy {r['val_accuracy']:.4f}"
    return text + f" [{r['minutes']:.1f} min]"


# Settings a resumed run may change: they do not alter what the run computes.
_RESUMABLE = ("max_minutes", "threads", "device", "prefetch", "backbone_weights")


def _run_options(options: TrainOptions) -> dict:
    """The settings that shape a run, as JSON values (what a checkpoint records)."""
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


def _save_checkpoint(run: _Run, optimizer, done: tuple[int, ...], pos: _Position) -> None:
    """Write the run's checkpoint: ``optimizer`` (None at the end of a stage), ``done`` and
    ``pos`` as they will be once the current epoch is over."""
    elapsed = run.elapsed()
    model = run.model
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "meta": run.meta.to_json(),
        "options": json.dumps(_run_options(run.options)),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "has_context": model.has_context_branch,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "history": json.dumps(run.history), "best": json.dumps(asdict(run.best)),
        "done": list(done), "pos": json.dumps(asdict(pos)),
        "stage_best_miou": float(run.stage_best.miou), "stage_best_state": run.stage_best.state,
        "rng": json.dumps(run.rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
        "elapsed": float(elapsed),
    }
    with atomic_output(run.ckpt_path, overwrite=True) as tmp:
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
