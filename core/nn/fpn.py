"""The FPN decoder of a GLNet branch, with or without the other branch's maps.

Levels run coarsest first: index 0 is stride 32 (c5/p5), index 3 stride 4
(c2/p2). A decoder has a plain path (its own maps only) and/or a context path
in which every stage's input is concatenated with the other branch's map of
the same level, as GLNet shares features at every FPN stage. The released
decoders have no normalisation or activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Pyramid:
    """Feature maps of one branch for a batch.

    Attributes:
        c: backbone stages [c5, c4, c3, c2].
        ps0: top-down maps after the lateral convs, [p5, p4, p3, p2].
        ps1: after the first smoothing convs.
        ps2: after the second smoothing convs.
        ps3: the branch's last map: ps2 upsampled to stride 4 and concatenated
            (then fused when the branch had context); input of the classifier
            and of the aggregation conv.
        logits: class scores at stride 4.
    """

    c: list[torch.Tensor]
    ps0: list[torch.Tensor]
    ps1: list[torch.Tensor]
    ps2: list[torch.Tensor]
    ps3: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    def maps(self) -> list[torch.Tensor]:
        """The 16 maps shared between branches: c, ps0, ps1, ps2."""
        return [*self.c, *self.ps0, *self.ps1, *self.ps2]

    @classmethod
    def from_maps(cls, maps: list[torch.Tensor]) -> Pyramid:
        return cls(maps[0:4], maps[4:8], maps[8:12], maps[12:16])


def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=1, padding=k // 2)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _with(x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, _resize(ctx, x)], dim=1)


def _stack_levels(ps: list[torch.Tensor]) -> torch.Tensor:
    finest = ps[-1]
    return torch.cat([_resize(p, finest) for p in ps], dim=1)


class FPNDecoder(nn.Module):
    """Top-down pathway, two smoothing stages per level, classifier.

    Args:
        in_channels: channels of [c2, c3, c4, c5] (torchvision's stage order).
        fpn_channels: width of the top-down pathway.
        smooth_channels: width after the second smoothing stage.
        num_classes: classifier outputs.
        plain: build the path that sees this branch's maps only.
        context: build the path whose inputs are concatenated with the other
            branch's maps, ending in a ``fuse`` conv over both last maps.
        fuse_kernel: kernel size of ``fuse``.
    """

    def __init__(self, in_channels: tuple[int, ...], fpn_channels: int, smooth_channels: int,
                 num_classes: int, plain: bool, context: bool, fuse_kernel: int = 3) -> None:
        super().__init__()
        cins = list(reversed(in_channels))  # coarsest first
        f, s = fpn_channels, smooth_channels
        self.has_plain, self.has_context = plain, context
        if plain:
            self.top = _conv(cins[0], f, 1)
            self.lateral = nn.ModuleList(_conv(c, f, 1) for c in cins[1:])
            self.smooth_a = nn.ModuleList(_conv(f, f, 3) for _ in range(4))
            self.smooth_b = nn.ModuleList(_conv(f, s, 3) for _ in range(4))
        if context:
            self.top_ctx = _conv(2 * cins[0], f, 1)
            self.lateral_ctx = nn.ModuleList(_conv(2 * c, f, 1) for c in cins[1:])
            self.smooth_a_ctx = nn.ModuleList(_conv(2 * f, f, 3) for _ in range(4))
            self.smooth_b_ctx = nn.ModuleList(_conv(2 * f, s, 3) for _ in range(4))
            self.fuse = _conv(2 * 4 * s, 4 * s, fuse_kernel)
        self.classify = _conv(4 * s, num_classes, 3)

    def forward(self, c: list[torch.Tensor], context: Pyramid | None = None) -> Pyramid:
        """Decode ``c`` ([c5, c4, c3, c2]); with ``context``, share its maps at every stage.

        Context maps of another size (crops of the global maps) are bilinearly
        resized to this branch's maps.
        """
        if context is None:
            if not self.has_plain:
                raise ValueError("this decoder needs the other branch's context")
            ps0 = [self.top(c[0])]
            for lateral, ci in zip(self.lateral, c[1:]):
                ps0.append(_upsample_add(ps0[-1], lateral(ci)))
            ps1 = [conv(p) for conv, p in zip(self.smooth_a, ps0)]
            ps2 = [conv(p) for conv, p in zip(self.smooth_b, ps1)]
            ps3 = _stack_levels(ps2)
        else:
            if not self.has_context:
                raise ValueError("this decoder was built without a context path")
            ps0 = [self.top_ctx(_with(c[0], context.c[0]))]
            for lateral, ci, ce in zip(self.lateral_ctx, c[1:], context.c[1:]):
                ps0.append(_upsample_add(ps0[-1], lateral(_with(ci, ce))))
            ps1 = [conv(_with(p, e)) for conv, p, e in zip(self.smooth_a_ctx, ps0, context.ps0)]
            ps2 = [conv(_with(p, e)) for conv, p, e in zip(self.smooth_b_ctx, ps1, context.ps1)]
            ps3 = self.fuse(_stack_levels([_with(p, e) for p, e in zip(ps2, context.ps2)]))
        return Pyramid(c, ps0, ps1, ps2, ps3, self.classify(ps3))


def _upsample_add(coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return _resize(coarse, lateral) + lateral
