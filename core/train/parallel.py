"""Training on several processes or machines with ``torch.distributed`` (``torchrun``).

Data parallel training as PyTorch's ``DistributedDataParallel`` does it: every
process (rank) holds the same model, draws its own training windows, and
before each optimizer step the gradients are averaged over all ranks with an
all-reduce, so that every rank takes the same step; BatchNorm running
statistics are broadcast from rank 0 after each step, as DDP does with
buffers. The ``DistributedDataParallel`` module itself is not used because a
GLNet training step calls the branches' own methods (not ``forward``) and runs
several backward passes over sub-batches of patches, which DDP's reducer does
not follow; averaging at the optimizer step is the same arithmetic.

``torchrun --nproc-per-node 2 -m glnet.cli train ...`` sets the environment
that ``from_env`` reads; the backend is gloo (training runs on CPUs). Only
rank 0 writes the model, checkpoints and log lines, and validates; the
others take its verdicts. At the end the ranks check that their weights
are still identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import GlnetError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (``rank`` of ``world``)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Replace every gradient by its mean over the ranks (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def broadcast_state(self, model: torch.nn.Module, buffers_only: bool = False) -> None:
        """Copy rank 0's parameters and buffers (or buffers only) to every rank."""
        if not self.active:
            return
        tensors = list(model.buffers()) if buffers_only else list(model.state_dict().values())
        for t in tensors:
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t.data, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (stops all ranks together)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.broadcast(t, src=0)
        return float(t.item())

    def check_identical(self, model: torch.nn.Module) -> None:
        """Raise if the ranks' weights differ (they must, after averaged steps, not)."""
        if not self.active:
            return
        flat = torch.cat([t.detach().double().reshape(-1) for t in model.state_dict().values()
                          if t.is_floating_point()])
        digest = torch.stack([flat.sum(), (flat * torch.arange(flat.numel(),
                                                               dtype=torch.float64)).sum()])
        low, high = digest.clone(), digest.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise GlnetError(f"rank {self.rank}: the ranks' weights diverged")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def from_env() -> Ranks:
    """The run ``torchrun`` set up (``WORLD_SIZE`` > 1), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    if not dist.is_available():
        raise GlnetError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    owns = False
    if not dist.is_initialized():
        # Training runs on CPUs, so gloo; the variable leaves room for other backends.
        dist.init_process_group(backend=os.environ.get("GLNET_DIST_BACKEND", "gloo"))
        owns = True
    return Ranks(dist.get_rank(), dist.get_world_size(), owns)


class AveragingOptimizer:
    """Wraps an optimizer: ``step`` averages gradients first, then syncs BatchNorm buffers."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                 ranks: Ranks) -> None:
        self.optimizer = optimizer
        self.model = model
        self.ranks = ranks

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.ranks.average_gradients(self.model)
        self.optimizer.step()
        self.ranks.broadcast_state(self.model, buffers_only=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
