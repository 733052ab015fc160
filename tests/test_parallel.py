"""Data-parallel training with torch.distributed: two CPU processes on gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

BIN = Path(sys.executable).parent

RANK_SCRIPT = r"""
import sys, torch
from glnet.config import NetConfig, TrainConfig
from glnet.nn.glnet import GLNet
from glnet.train.parallel import AveragingOptimizer, from_env
from glnet.train.stages import make_optimizer, train_step

torch.set_num_threads(1)
ranks = from_env()
torch.manual_seed(0)
cfg = NetConfig(backbone="resnet18", in_channels=3, num_classes=3, fpn_channels=16,
                smooth_channels=8, fuse_kernel=1, window_size=96, global_size=48,
                patch_size=48, min_overlap=8, channels_last=False)
model = GLNet(cfg)
train_cfg = TrainConfig(focal_gamma=0.0, sub_batch=4)
data = torch.Generator().manual_seed(100 + ranks.rank)  # each rank its own windows
for stage in (1, 2):
    model.set_stage(stage)
    ranks.broadcast_state(model)
    opt = AveragingOptimizer(make_optimizer(model, stage, train_cfg), model, ranks)
    for _ in range(2):
        x = torch.randn(1, 3, 96, 96, generator=data)
        y = torch.randint(0, 3, (1, 96, 96), generator=data)
        train_step(model, [(x, y)], opt, train_cfg)
ranks.check_identical(model)
torch.save(model.state_dict(), sys.argv[1])
ranks.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_train_to_identical_weights(tmp_path):
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                   RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT,
                                       str(tmp_path / f"rank{rank}.pt")], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and they trained: the local branch moved away from a fresh model's weights
    torch.manual_seed(0)
    from glnet.config import NetConfig
    from glnet.nn.glnet import GLNet

    fresh = GLNet(NetConfig(backbone="resnet18", in_channels=3, num_classes=3, fpn_channels=16,
                            smooth_channels=8, fuse_kernel=1, window_size=96, global_size=48,
                            patch_size=48, min_overlap=8, channels_last=False)).state_dict()
    moved = [k for k in fresh if k in a and a[k].is_floating_point()
             and not torch.equal(a[k], fresh[k])]
    assert any(k.startswith("global_") for k in moved) and any(k.startswith("local_") for k in moved)
    # BatchNorm running statistics were synchronised too (they are updated from local data)
    assert any("running_mean" in k for k in moved)


def test_torchrun_trains_through_the_cli(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "glnet.cli", "--progress", "none", "synth", str(data),
                    "--size", "384", "--seed", "2"], check=True, capture_output=True)
    model = tmp_path / "model.glnet"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "glnet.cli",
         "--progress", "none", "train", str(data / "scene.tif"), "--labels",
         str(data / "labels.tif"), "-o", str(model), "--window", "128", "--patch", "64",
         "--global-size", "64", "--epochs", "1", "--windows-per-epoch", "2", "--threads", "1",
         "--seed", "3"],
        capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 only
    assert "stages 1, 2, 3" in proc.stdout
    info = subprocess.run([sys.executable, "-m", "glnet.cli", "info", str(model), "--json"],
                          capture_output=True, text=True, check=True)
    assert '"stages": [' in info.stdout
    assert not list(tmp_path.glob(".model.glnet.*"))
