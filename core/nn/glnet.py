"""The GLNet network: a global and a local ResNet-FPN branch that share features.

Branches:
    global: the whole window, downsampled to about ``global_size``.
    local: full-resolution patches of the window, each decoded with the
        global maps cropped at its footprint (global to local).
    context (after stage 3 only): a frozen copy of the stage-1 global branch
        that supplies the local branch's context, as in the released code,
        while the global branch itself is retrained with local maps merged into
        it (local to global).
    aggregation: a 3x3 conv over the local and the cropped global last maps.

Training stages (``set_stage``): 1 trains the global branch alone; 2 freezes
it (BatchNorm statistics too) and trains the local branch and the aggregation;
3 freezes the local branch, keeps a frozen copy of the stage-1 global branch as
context, and trains the global branch's context path and the aggregation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import NetConfig
from .backbone import make_trunk
from .fpn import FPNDecoder, Pyramid

# Sub-modules trained in each stage; everything else is frozen (eval mode, no grad).
TRAINED = {
    1: ("global_backbone", "global_decoder"),
    2: ("local_backbone", "local_decoder", "aggregation"),
    3: ("global_backbone", "global_decoder", "aggregation"),
}


class GLNet(nn.Module):
    """GLNet with the shapes of ``cfg``; see the module docstring."""

    def __init__(self, cfg: NetConfig, context_branch: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        # A first trunk only for its widths: it also keeps the random draws of
        # the initialisation as they were when the widths came from it, so that
        # a seeded run builds the same network as before.
        chans = make_trunk(cfg.backbone, cfg.in_channels).channels
        self.global_backbone = make_trunk(cfg.backbone, cfg.in_channels)
        dec = dict(in_channels=chans, fpn_channels=cfg.fpn_channels,
                   smooth_channels=cfg.smooth_channels, num_classes=cfg.num_classes,
                   fuse_kernel=cfg.fuse_kernel)
        self.global_decoder = FPNDecoder(plain=True, context=True, **dec)
        self.local_backbone = make_trunk(cfg.backbone, cfg.in_channels)
        self.local_decoder = FPNDecoder(plain=False, context=True, **dec)
        self.aggregation = nn.Conv2d(2 * cfg.feature_channels, cfg.num_classes, 3, padding=1)
        self.context_backbone: nn.Module | None = None
        self.context_decoder: FPNDecoder | None = None
        self._decoder_kwargs = dec
        self.stage = 0
        # Training pretrained trunks keeps their BatchNorm statistics (see config.TrainOptions.freeze_bn).
        self.frozen_trunk_statistics = False
        self._init_decoders()
        if context_branch:
            self.add_context_branch()
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    def _init_decoders(self) -> None:
        # The released initialisation: N(0, 0.01) weights, zero biases.
        for module in [*self.global_decoder.modules(), *self.local_decoder.modules(), self.aggregation]:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                nn.init.zeros_(module.bias)

    # -- geometry -----------------------------------------------------------------

    def global_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size of the global branch's input for a window of ``height`` x ``width``.

        Windows are shrunk by ``global_size / window_size`` whatever their size,
        so the global branch always sees the scale it was trained at; very small
        windows keep at least 32 pixels (or their own size).
        """
        scale = self.cfg.global_size / self.cfg.window_size
        return (max(min(height, 32), round(height * scale)),
                max(min(width, 32), round(width * scale)))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the memory layout the network runs fastest in."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # -- branches -----------------------------------------------------------------

    @property
    def has_context_branch(self) -> bool:
        return self.context_backbone is not None

    def global_pyramid(self, image: torch.Tensor) -> Pyramid:
        """The global branch alone (stage 1)."""
        return self.global_decoder(self.global_backbone(image))

    def context_pyramid(self, image: torch.Tensor) -> Pyramid:
        """Global maps that serve as the local branch's context.

        The frozen stage-1 copy once stage 3 has begun, else the global branch.
        """
        if self.context_backbone is None:
            return self.global_pyramid(image)
        return self.context_decoder(self.context_backbone(image))

    def local_pyramid(self, patches: torch.Tensor, context: Pyramid) -> Pyramid:
        """The local branch on ``patches`` with their cropped global ``context``."""
        return self.local_decoder(self.local_backbone(patches), context)

    def refined_pyramid(self, image: torch.Tensor, merged: Pyramid) -> Pyramid:
        """The global branch with the window's local maps merged in (local to global)."""
        return self.global_decoder(self.global_backbone(image), merged)

    def aggregate(self, local_ps3: torch.Tensor, global_ps3: torch.Tensor) -> torch.Tensor:
        """Class scores from both branches' last maps (the global one cropped and resized)."""
        return self.aggregation(torch.cat([local_ps3, global_ps3], dim=1))

    # -- stages -------------------------------------------------------------------

    def add_context_branch(self) -> None:
        """Freeze a copy of the current global branch (plain path) as the local context.

        Called at the start of stage 3, so that the local branch keeps the
        context it was trained with in stage 2 while the global branch changes.
        """
        backbone = make_trunk(self.cfg.backbone, self.cfg.in_channels)
        decoder = FPNDecoder(plain=True, context=False, **self._decoder_kwargs)
        backbone.load_state_dict(self.global_backbone.state_dict())
        plain = {k: v for k, v in self.global_decoder.state_dict().items()
                 if k in decoder.state_dict()}
        decoder.load_state_dict(plain)
        device = next(self.global_backbone.parameters()).device
        self.context_backbone, self.context_decoder = backbone.to(device), decoder.to(device)
        if self.cfg.channels_last:
            self.context_backbone.to(memory_format=torch.channels_last)
            self.context_decoder.to(memory_format=torch.channels_last)
        for p in [*backbone.parameters(), *decoder.parameters()]:
            p.requires_grad_(False)
        self._apply_modes()

    def set_stage(self, stage: int) -> None:
        """Prepare training stage 1, 2 or 3: freeze all but that stage's parts.

        Frozen parts get ``requires_grad=False`` and stay in eval mode even
        after ``train()``, so their BatchNorm statistics never move.
        """
        if stage not in TRAINED:
            raise ValueError(f"stage must be 1, 2 or 3, not {stage!r}")
        if stage == 3 and not self.has_context_branch:
            self.add_context_branch()
        self.stage = stage
        trained = TRAINED[stage]
        for name, module in self.named_children():
            for p in module.parameters():
                p.requires_grad_(name in trained)
        self._apply_modes()

    def trained_modules(self) -> tuple[str, ...]:
        return TRAINED.get(self.stage, ())

    def train(self, mode: bool = True) -> GLNet:
        super().train(mode)
        self._apply_modes()
        return self

    def _apply_modes(self) -> None:
        trained = self.trained_modules()
        for name, module in self.named_children():
            if name not in trained:
                module.eval()
            elif self.frozen_trunk_statistics and name.endswith("_backbone"):
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
