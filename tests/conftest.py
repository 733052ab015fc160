from __future__ import annotations

import pytest
import torch

from glnet.config import NetConfig


@pytest.fixture
def tiny_cfg() -> NetConfig:
    """A small GLNet that runs in well under a second on two cores."""
    return NetConfig(backbone="resnet18", in_channels=3, num_classes=4, fpn_channels=16,
                     smooth_channels=8, fuse_kernel=3, window_size=192, global_size=96,
                     patch_size=96, min_overlap=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
