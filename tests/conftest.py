from __future__ import annotations

import fixtures_models as fm
import pytest
import torch

from glnet.config import NetConfig
from glnet.modelfile import save_model


@pytest.fixture
def tiny_cfg() -> NetConfig:
    """A small GLNet that runs in well under a second on two cores."""
    return NetConfig(backbone="resnet18", in_channels=3, num_classes=4, fpn_channels=16,
                     smooth_channels=8, fuse_kernel=3, window_size=192, global_size=96,
                     patch_size=96, min_overlap=16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def trained():
    """The tiny GLNet trained through stages 1 and 2 on synthetic landscapes (~30-60 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fm.train_tiny()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_file(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.glnet"
    return save_model(*trained, path)
