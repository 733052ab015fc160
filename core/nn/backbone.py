"""The trunks of GLNet's branches: torchvision ResNets and EfficientNet-Lite0.

Every trunk returns the four stages ``[c5, c4, c3, c2]`` (strides 32 to 4) and
names their widths in ``channels``. ResNet ImageNet weights come only from a
local file the user names; EfficientNet-Lite0's from an installed package
(``efficientnet``). Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import ModelFileError

# Output channels of layer1..layer4 for each ResNet trunk.
STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    ``forward`` returns ``[c5, c4, c3, c2]``: coarsest first, the order in which
    the FPN's top-down pathway consumes them. Parameter names are torchvision's
    (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so ImageNet state dicts load
    directly.
    """

    def __init__(self, name: str, in_channels: int = 3) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = STAGE_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c5, c4, c3, c2]


def make_trunk(name: str, in_channels: int = 3) -> nn.Module:
    """The trunk called ``name`` (``config.BACKBONES``), with random weights."""
    if name in STAGE_CHANNELS:
        return ResNetTrunk(name, in_channels)
    from .efficientnet import EfficientNetLiteTrunk

    return EfficientNetLiteTrunk(name, in_channels)


def has_packaged_weights(name: str) -> bool:
    """Whether ImageNet weights for trunk ``name`` come with an installable package."""
    from .efficientnet import LITE0

    return name == LITE0


def load_packaged_weights(trunk: nn.Module) -> None:
    """Load the packaged ImageNet weights into ``trunk`` (see ``has_packaged_weights``)."""
    from .efficientnet import EfficientNetLiteTrunk, load_lite0_weights

    if not isinstance(trunk, EfficientNetLiteTrunk):
        raise ModelFileError(f"no packaged ImageNet weights for a {type(trunk).__name__}; "
                             "give a torchvision weights file instead")
    load_lite0_weights(trunk)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-layer kernel into one for ``in_channels`` bands.

    Bands cycle through R, G, B and the kernel is scaled by ``3 / in_channels``
    so that an input with equal bands gives the same response as grey RGB.
    """
    if in_channels == weight.shape[1]:
        return weight
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


def load_imagenet_weights(trunk: ResNetTrunk, path: str | Path) -> None:
    """Load torchvision ImageNet weights for ``trunk`` from a local ``.pth`` file.

    The file is read with ``weights_only=True`` (no code runs); keys of the
    classifier (``fc.*``) are ignored; any other mismatch is an error that names
    the file.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: backbone weights file not found") from None
    except Exception as exc:  # torch raises many types for bad files
        raise ModelFileError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: expected a state dict of ResNet weights")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "conv1.weight" in state:
        state["conv1.weight"] = adapt_first_conv(state["conv1.weight"], trunk.conv1.in_channels)
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or bad_shape:
        detail = missing[:3] or unexpected[:3] or bad_shape[:3]
        raise ModelFileError(
            f"{path}: not ImageNet weights of a {type(trunk).__name__} "
            f"with {trunk.channels[-1]} final channels (first mismatching keys: {', '.join(detail)})"
        )
    trunk.load_state_dict(state)
