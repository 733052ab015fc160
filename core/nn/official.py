"""Conversion of the released GLNet checkpoints (DeepGlobe) into our parameter names.

The released checkpoints are plain state dicts saved from ``nn.DataParallel``
(keys prefixed ``module.``): G.pth after stage 1, G2L.pth after stage 2 and
L2G.pth after stage 3. Their parameters map one to one onto the ``official``
preset; ``convert_state`` does the renaming and checks that nothing is left
over or missing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import ModelFileError

# DeepGlobe land cover: class names and the colours of its label PNGs.
DEEPGLOBE_CLASSES = (
    ("unknown", (0, 0, 0)),
    ("urban", (0, 255, 255)),
    ("agriculture", (255, 255, 0)),
    ("rangeland", (255, 0, 255)),
    ("forest", (0, 255, 0)),
    ("water", (0, 0, 255)),
    ("barren", (255, 255, 255)),
)

_DECODER_RENAMES = [
    (r"toplayer_ext\.", "top_ctx."),
    (r"latlayer([123])_ext\.", lambda m: f"lateral_ctx.{int(m[1]) - 1}."),
    (r"smooth([1-4])_1_ext\.", lambda m: f"smooth_a_ctx.{int(m[1]) - 1}."),
    (r"smooth([1-4])_2_ext\.", lambda m: f"smooth_b_ctx.{int(m[1]) - 1}."),
    (r"toplayer\.", "top."),
    (r"latlayer([123])\.", lambda m: f"lateral.{int(m[1]) - 1}."),
    (r"smooth([1-4])_1\.", lambda m: f"smooth_a.{int(m[1]) - 1}."),
    (r"smooth([1-4])_2\.", lambda m: f"smooth_b.{int(m[1]) - 1}."),
    (r"smooth\.", "fuse."),
    (r"classify\.", "classify."),
]


def _rename_decoder(rest: str, local: bool) -> str:
    for pattern, repl in _DECODER_RENAMES:
        m = re.match(pattern, rest)
        if m:
            new = repl if isinstance(repl, str) else repl(m)
            # The local decoder has only a context path, named without "_ext".
            if local and not new.startswith(("fuse", "classify")):
                head, _, tail = new.partition(".")
                new = f"{head}_ctx.{tail}"
            return new + rest[m.end():]
    raise KeyError(rest)


def official_to_ours(key: str) -> str:
    """Our name for a released parameter name (without ``module.``).

    >>> official_to_ours("fpn_local.smooth2_1.weight")
    'local_decoder.smooth_a_ctx.1.weight'
    """
    group, _, rest = key.partition(".")
    if group == "resnet_global":
        return f"global_backbone.{rest}"
    if group == "resnet_local":
        return f"local_backbone.{rest}"
    if group == "fpn_global":
        return f"global_decoder.{_rename_decoder(rest, local=False)}"
    if group == "fpn_local":
        return f"local_decoder.{_rename_decoder(rest, local=True)}"
    if group == "ensemble_conv":
        return f"aggregation.{rest}"
    raise KeyError(key)


def strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix that ``nn.DataParallel`` adds."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_state(g: Mapping[str, torch.Tensor], g2l: Mapping[str, torch.Tensor] | None = None,
                  l2g: Mapping[str, torch.Tensor] | None = None,
                  source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """Our state dict and the stages done, from the released checkpoints.

    The final model takes everything from the latest checkpoint. After stage 3
    (``l2g`` given) the context branch is the stage-1 global branch of ``g``,
    as the released evaluation feeds the local branch from that fixed model.

    Raises ``ModelFileError`` naming ``source`` if a key is unknown.
    """
    g, g2l, l2g = (strip_module(s) if s is not None else None for s in (g, g2l, l2g))
    latest = l2g or g2l or g
    stages = (1, 2, 3) if l2g is not None else (1, 2) if g2l is not None else (1,)
    out: dict[str, torch.Tensor] = {}
    for key, value in latest.items():
        try:
            out[official_to_ours(key)] = value
        except KeyError:
            raise ModelFileError(f"{source}: unexpected parameter {key!r} for the released GLNet") from None
    if l2g is not None:
        for key, value in g.items():
            if key.startswith("resnet_global."):
                out["context_backbone." + key.partition(".")[2]] = value
            elif key.startswith("fpn_global.") and "_ext" not in key and not key.startswith("fpn_global.smooth."):
                out["context_decoder." + official_to_ours(key).partition(".")[2]] = value
    return out, stages


def model_from_official(g: Mapping[str, torch.Tensor], g2l: Mapping[str, torch.Tensor] | None = None,
                        l2g: Mapping[str, torch.Tensor] | None = None, source: str = "checkpoint"):
    """A ``GLNet`` of the ``official`` preset holding the released checkpoints' weights.

    Returns ``(model, stages)``. The number of classes is read from the
    classifier. Every parameter and buffer must be matched: a checkpoint of
    another architecture is refused with a ``ModelFileError`` naming ``source``.
    """
    from ..config import preset
    from .glnet import GLNet

    state, stages = convert_state(g, g2l, l2g, source=source)
    try:
        num_classes = int(state["aggregation.weight"].shape[0])
    except KeyError:
        raise ModelFileError(f"{source}: no aggregation conv ('ensemble_conv'): not a released GLNet") from None
    model = GLNet(preset("official", num_classes=num_classes), context_branch=3 in stages)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or bad:
        what = (f"missing {', '.join(missing[:3])}" if missing
                else f"wrong shape for {', '.join(bad[:3])}")
        raise ModelFileError(f"{source}: not the released GLNet architecture ({what})")
    model.load_state_dict(state)
    model.stage = 0
    return model, stages


def load_checkpoint(path) -> dict[str, torch.Tensor]:
    """A released checkpoint's state dict, read without running any code from it.

    ``torch.load(weights_only=True)`` admits tensors and plain containers only;
    anything else (a pickled object, a code payload) is refused with a
    ``ModelFileError`` naming the file.
    """
    import pickle
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a regular file (a device or a pipe?)")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive, or (before PyTorch 1.6) a pickle from protocol 2 on.
    if magic != b"PK\x03\x04" and not (magic[:1] == b"\x80" and magic[1:2] in b"\x02\x03\x04\x05"):
        raise ModelFileError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a "
                             "pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise ModelFileError(f"{path}: not a readable PyTorch checkpoint "
                                 f"({' '.join(str(exc).split())[:200]})") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise ModelFileError(f"{path}: refused: the file holds more than plain tensors "
                             f"(loading it would run code from it; {first[:200]})") from None
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return state


def deepglobe_meta(net, stages: tuple[int, ...]):
    """Metadata of a model converted from the released DeepGlobe checkpoints."""
    from ..modelfile import ClassInfo, ModelMeta

    return ModelMeta(
        net=net,
        classes=tuple(ClassInfo(i, name, color) for i, (name, color) in enumerate(DEEPGLOBE_CLASSES)),
        bands=("red", "green", "blue"),
        dtype="uint8",
        # The released code feeds ToTensor() images, x / 255, unnormalised.
        mean=(0.0, 0.0, 0.0),
        std=(255.0, 255.0, 255.0),
        resolution=0.5,
        stages=stages,
        preset="official",
        ignore_index=0,
        notes="Converted from the released GLNet DeepGlobe checkpoints (VITA-Group/GLNet, MIT).",
    )
