"""Model files: one safetensors file holding the weights and the metadata.

Layout: a safetensors file (8-byte little-endian header length, a JSON header,
raw tensor bytes) whose ``__metadata__`` carries ``{"format": "glnet-qgis",
"format_version": "1", "glnet": <ModelMeta as JSON>}``. Reading it never
unpickles anything, so a crafted file cannot run code; every field is checked
before a network is built. ``read_metadata`` needs neither torch nor numpy,
so the QGIS plugin can show a model's classes and defaults.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import NetConfig
from .contract import ClassInfo
from .errors import ModelFileError, OptionError
from .files import atomic_output

FORMAT = "glnet-qgis"
FORMAT_VERSION = 1
# A header larger than this is not one of ours (ours are a few hundred KiB).
MAX_HEADER_BYTES = 64 * 1024 * 1024
DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
# Bytes per value of the safetensors dtypes a model's tensors may have.
TENSOR_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                 "I8": 1, "U8": 1, "BOOL": 1}
_TORCH_DTYPES = {"torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16",
                 "torch.bfloat16": "BF16", "torch.int64": "I64", "torch.int32": "I32",
                 "torch.int16": "I16", "torch.int8": "I8", "torch.uint8": "U8", "torch.bool": "BOOL"}
# Metadata key of the tensor data's SHA-256 (hex); files from before it have none.
CHECKSUM_KEY = "sha256"


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to use a model besides its weights.

    Attributes:
        net: the network's shapes and window geometry.
        classes: output classes, in the order of the network's outputs.
        bands: names of the input bands, in the order the network takes them.
        dtype: the data type of the rasters it was trained on.
        mean, std: per-band statistics in raw raster units; inputs are fed as
            ``(x - mean) / std``.
        resolution: ground sampling distance (metres per pixel) it was trained
            at, or None if unknown.
        stages: training stages done, e.g. (1, 2, 3).
        preset: the preset the network was built from.
        ignore_index: label value that was ignored in training.
        notes: free text (provenance).
    """

    net: NetConfig
    classes: tuple[ClassInfo, ...]
    bands: tuple[str, ...]
    dtype: str = "uint8"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resolution: float | None = None
    stages: tuple[int, ...] = ()
    preset: str = "fast"
    ignore_index: int = 255
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.net.in_channels
        if len(self.classes) != self.net.num_classes:
            raise OptionError(f"{len(self.classes)} classes named for a network with "
                             f"{self.net.num_classes} outputs")
        if len(self.bands) != n:
            raise OptionError(f"{len(self.bands)} band names for a network with {n} input bands")
        if len(self.mean) != n or len(self.std) != n:
            raise OptionError(f"mean and std need {n} values each")
        if not all(math.isfinite(m) for m in self.mean):
            raise OptionError(f"mean values must be finite numbers: {self.mean}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise OptionError(f"std values must be positive finite numbers: {self.std}")
        values = [c.value for c in self.classes]
        if sorted(values) != list(range(len(values))):
            raise OptionError(f"class values must be 0 to {len(values) - 1}, each once "
                              f"(255 is nodata in masks): {values}")
        if self.dtype not in DTYPES:
            raise OptionError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if any(s not in (1, 2, 3) for s in self.stages):
            raise OptionError(f"stages must be among 1, 2, 3: {self.stages}")

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("metadata is not a JSON object")
        d = dict(d)
        d["net"] = NetConfig.from_dict(d["net"])
        d["classes"] = tuple(ClassInfo(int(c["value"]), str(c["name"]), _color(c["color"]))
                             for c in d["classes"])
        for key, conv in (("bands", str), ("mean", float), ("std", float), ("stages", int)):
            if key in d:
                d[key] = tuple(conv(v) for v in d[key])
        return cls(**d)


def _color(value: Any) -> tuple[int, int, int]:
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise OptionError(f"colour must be three values 0-255: {value!r}")
    return rgb  # type: ignore[return-value]


def default_meta(net: NetConfig, preset: str = "fast", **kwargs: Any) -> ModelMeta:
    """Metadata with generic class and band names and identity scaling for [0, 1] inputs."""
    from .palette import default_colors

    colors = default_colors(net.num_classes)
    classes = tuple(ClassInfo(i, f"class {i}", colors[i]) for i in range(net.num_classes))
    n = net.in_channels
    base = dict(classes=classes, bands=tuple(f"band {i + 1}" for i in range(n)),
                dtype="float32", mean=(0.0,) * n, std=(1.0,) * n, preset=preset)
    base.update(kwargs)
    return ModelMeta(net=net, **base)


def _read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header of ``path`` and the offset where its tensor data begins."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelFileError(f"{path}: not a GLNet model file (too short)")
            (length,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if length < 2 or length > MAX_HEADER_BYTES or 8 + length > size:
                raise ModelFileError(f"{path}: not a GLNet model file (no safetensors header)")
            text = f.read(length)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a model file") from None
    except PermissionError:
        raise ModelFileError(f"{path}: model file is not readable (permission denied)") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelFileError(f"{path}: not a GLNet model file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: not a GLNet model file (header is not a JSON object)")
    return header, 8 + length


def _tensor_table(path: Path, header: dict, start: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The header's tensors as ``{name: (dtype, shape)}``, checked against the file's size.

    Every tensor's byte range must hold exactly its shape's values and the
    ranges must tile the data from ``start`` to the end of the file, so what a
    file asks to be allocated is bounded by its own size. Refuses a truncated
    file, or a crafted table, with a ``ModelFileError`` before anything is read.
    """
    size = os.stat(path).st_size - start
    table, ranges = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if (dtype not in TENSOR_DTYPES or not isinstance(shape, list)
                    or not all(type(v) is int and v >= 0 for v in (*shape, lo, hi))):
                raise TypeError
        except (TypeError, ValueError, KeyError):
            raise ModelFileError(f"{path}: corrupt model file (bad tensor entry {name[:80]!r})") from None
        if hi - lo != math.prod(shape) * TENSOR_DTYPES[dtype]:
            raise ModelFileError(f"{path}: corrupt model file (tensor {name[:80]} has "
                                 f"{hi - lo} bytes for shape {tuple(shape)} {dtype})")
        table[name] = (dtype, tuple(shape))
        ranges.append((lo, hi))
    end = 0
    for lo, hi in sorted(ranges):
        if lo != end:
            raise ModelFileError(f"{path}: corrupt model file (tensor data overlaps or has gaps)")
        end = hi
    if end > size:
        raise ModelFileError(f"{path}: truncated model file ({start + size:,} bytes, its tensors "
                             f"need {start + end:,})")
    if end < size:
        raise ModelFileError(f"{path}: corrupt model file ({size - end:,} bytes after the tensors)")
    return table


def parameter_count(path: str | Path) -> int:
    """Number of values stored in a model file, from its header alone."""
    header, _ = _read_header(Path(path))
    total = 0
    for key, entry in header.items():
        if key != "__metadata__" and isinstance(entry, dict):
            n = 1
            for dim in entry.get("shape", []):
                n *= int(dim)
            total += n
    return total


def describe(meta: ModelMeta, path: str | Path | None = None) -> str:
    """A human-readable summary of a model's metadata."""
    net = meta.net
    lines = []
    if path is not None:
        lines.append(f"model file:   {path}")
        lines.append(f"parameters:   {parameter_count(path):,}")
    lines += [
        f"preset:       {meta.preset} ({net.backbone}, FPN {net.fpn_channels}/{net.smooth_channels}, "
        f"fuse {net.fuse_kernel}x{net.fuse_kernel})",
        f"stages done:  {', '.join(map(str, meta.stages)) or 'none (untrained)'}",
        f"window:       {net.window_size} px, seen by the global branch at {net.global_size} px; "
        f"patches {net.patch_size} px, overlap >= {net.min_overlap} px",
        f"resolution:   {f'{meta.resolution:g} m/px' if meta.resolution else 'unknown'}",
        f"input:        {len(meta.bands)} band(s) {meta.dtype}: {', '.join(meta.bands)}",
        f"scaling:      (x - mean) / std, mean {_fmt(meta.mean)}, std {_fmt(meta.std)}",
        f"classes:      {len(meta.classes)}",
    ]
    for c in meta.classes:
        lines.append(f"  {c.value:>3}  {c.name:<24} #{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}")
    if meta.notes:
        lines.append(f"notes:        {meta.notes}")
    lines.append(f"format:       {FORMAT} version {FORMAT_VERSION}")
    return "\n".join(lines)


def _fmt(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def read_metadata(path: str | Path) -> ModelMeta:
    """The metadata of a model file, without loading its weights (nor torch).

    The header's tensor table is checked against the file's size too, so a
    truncated file is refused here; the data's checksum is not read
    (``check_model_file`` does that).
    """
    path = Path(path)
    header, start = _read_header(path)
    meta = _glnet_metadata(path, header)
    _tensor_table(path, header, start)
    return meta


def _glnet_metadata(path: Path, header: dict) -> ModelMeta:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: a safetensors file, but not a GLNet model "
                             f"(no '{FORMAT}' metadata)")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(f"{path}: model format version {version!r} is not supported "
                             f"(this glnet reads version {FORMAT_VERSION}); update glnet-qgis")
    try:
        return ModelMeta.from_json(meta["glnet"])
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ModelFileError(f"{path}: invalid model metadata ({exc})") from None


def check_model_file(path: str | Path) -> tuple[ModelMeta, dict[str, tuple[str, tuple[int, ...]]]]:
    """Check a whole model file without torch: ``(metadata, tensor table)``.

    Beyond ``read_metadata``, the tensor data is read to compare its SHA-256
    with the one the metadata records (files written before checksums were
    recorded have none, and pass).
    """
    path = Path(path)
    header, start = _read_header(path)
    meta = _glnet_metadata(path, header)
    table = _tensor_table(path, header, start)
    expected = header["__metadata__"].get(CHECKSUM_KEY)
    if expected is not None and expected != _data_checksum(path, start):
        raise ModelFileError(f"{path}: corrupt model file (tensor data does not match its "
                             f"SHA-256 checksum)")
    return meta, table


def _data_checksum(path: Path, start: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def save_model(model, meta: ModelMeta, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model``'s weights with ``meta`` to ``path`` atomically.

    The file is written to a temporary name in the same folder and renamed, so
    an interrupted save never leaves a half-written model where one is expected;
    an existing ``path`` is replaced only with ``overwrite``.
    """
    from safetensors.torch import save

    if meta.net != model.cfg:
        raise ValueError("metadata describes another network than the model")
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "glnet": meta.to_json()}
    head, data = _canonical_header(save(state, metadata=header))
    with atomic_output(path, overwrite) as tmp:
        _write_parts(tmp, head, data)
    return path


def _write_parts(path: Path, *parts) -> None:
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)


def _canonical_header(blob: bytes) -> tuple[bytes, memoryview]:
    """Split a safetensors file into a header with sorted metadata and the data.

    The library writes the metadata in hash-map order, which changes from run
    to run; sorting it makes the same weights and metadata the same bytes, so
    model files can be compared by checksum. The data's SHA-256 is added to
    the metadata, so that flipped bytes are found on load.
    """
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    data = memoryview(blob)[8 + length:]
    meta = {**header.pop("__metadata__", {}), CHECKSUM_KEY: hashlib.sha256(data).hexdigest()}
    ordered = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the library keeps it
    return struct.pack("<Q", len(text)) + text, data


def load_model(path: str | Path, device: str = "cpu"):
    """Read a model file: returns ``(GLNet, ModelMeta)``, the network in eval mode.

    Refuses, with a ``ModelFileError`` naming the file, anything that is not a
    GLNet model file of a known format version, metadata that does not
    validate, tensor data that does not match its checksum, and weights whose
    names, shapes or dtypes differ from the network the metadata describes;
    all of it is checked from the header and the raw data before the network
    is built.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .nn.glnet import GLNet

    path = Path(path)
    meta, table = check_model_file(path)
    context = any(k.startswith("context_") for k in table)
    _check_against_network(path, table, meta.net, context)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: corrupt model file ({exc})") from None
    model = GLNet(meta.net, context_branch=context)
    model.load_state_dict(state)
    model.to(device)
    model.eval()
    return model, meta


def _check_against_network(path: Path, table: dict, net: NetConfig, context: bool) -> None:
    """Refuse tensors whose names, shapes or dtypes differ from the network ``net`` describes.

    The network is laid out on torch's ``meta`` device, which allocates no
    memory, so a crafted configuration costs nothing before it is refused.
    """
    import torch

    from .nn.glnet import GLNet

    with torch.device("meta"):
        own = {k: (_TORCH_DTYPES.get(str(v.dtype), str(v.dtype)), tuple(v.shape))
               for k, v in GLNet(net, context_branch=context).state_dict().items()}
    missing = sorted(set(own) - set(table))
    unexpected = sorted(set(table) - set(own))
    if missing or unexpected:
        keys = ", ".join((missing or unexpected)[:3])
        raise ModelFileError(f"{path}: weights do not match the network its metadata describes "
                             f"({'missing' if missing else 'unexpected'}: {keys})")
    for key, (dtype, shape) in own.items():
        if table[key] != (dtype, shape):
            raise ModelFileError(f"{path}: weight {key} has shape {table[key][1]} {table[key][0]}, "
                                 f"expected {shape} {dtype}")
