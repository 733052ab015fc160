"""GLNet's branch networks run by OpenVINO; the patch orchestration stays in ``predict.py``.

``OpenVINONetwork(net)`` stands in for a ``GLNet`` wherever ``predict_window``
takes one: it has the same geometry (``cfg``, ``global_shape``, ``prepare``)
and branch calls (``context_pyramid``, ``global_pyramid``, ``local_pyramid``,
``refined_pyramid``, ``aggregate``), each backed by an OpenVINO model of the
torch module it replaces. Cropping, merging, resizing, the aggregation conv and
the probabilities stay in torch, so the masks are formed exactly as on the
torch path (torch is the reference and the training path).

Why the branches and not the whole window: the window's geometry (the global
view's size, the patch grid, the footprints) is computed in Python from the
window's shape and would be frozen into a traced graph; the branches are
plain convolutional networks of static shape.

Compiled once per input shape: a run's windows (and their patches) nearly all
share one shape, so a scene compiles each branch once or twice. Converted
models are saved in a cache folder (``cache_folder``: beside the model file),
keyed by a digest of the weights, the shapes and the OpenVINO version, so the
next run on the same model loads them (0.1 s) instead of tracing (tens of
seconds for the ``fast`` preset).

Precision: "fp32" asks OpenVINO for f32 inference explicitly (its CPU plugin
would otherwise pick bf16 on a CPU that has it), "bf16" for bf16. "int8" runs
the branches that ``glnet quantize`` (``segment.quantize``) quantised and kept
in the same folder, for the input shapes it calibrated; a shape it did not see
(a scene smaller than one window) runs in f32.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
import warnings
from pathlib import Path

import torch
from torch import nn

from .fpn import Pyramid
from .glnet import GLNet

# Folder beside a model file that keeps its converted branches: ``MODEL.openvino``.
CACHE_SUFFIX = ".openvino"
PACKAGE = "openvino"
# The record of a model's int8 branches in its cache folder (``segment.quantize``).
INT8_MANIFEST = "int8.json"


def available() -> bool:
    """Whether the openvino package can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec(PACKAGE) is not None


def cache_folder(model_path: str | os.PathLike) -> Path:
    """Where the converted branches of the model file ``model_path`` are kept."""
    path = Path(model_path)
    return path.with_name(path.name + CACHE_SUFFIX)


class _Plain(nn.Module):
    """A branch on its own maps: image -> 16 shared maps, last map, logits."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, image):
        pyr = self.decoder(self.backbone(image))
        return (*pyr.maps(), pyr.ps3, pyr.logits)


class _WithContext(nn.Module):
    """A branch with the other branch's 16 maps: -> 16 shared maps and the last map."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone, self.decoder = backbone, decoder

    def forward(self, image, *maps):
        pyr = self.decoder(self.backbone(image), Pyramid.from_maps(list(maps)))
        return (*pyr.maps(), pyr.ps3)


class OpenVINONetwork:
    """A ``GLNet``'s branches compiled by OpenVINO for the CPU; see the module docstring.

    Args:
        net: the torch network (on the CPU, in eval mode); kept for its
            geometry, its aggregation conv and as the source of each branch.
        precision: "fp32", "bf16" (OpenVINO's inference precision), or "int8":
            the quantised branches in ``cache`` (``segment.quantize``).
        threads: OpenVINO's inference threads (None: its default, all cores).
        cache: folder for converted branches (created when missing); None keeps
            them in memory only. A folder that cannot be written is used for
            reading only.
    """

    def __init__(self, net: GLNet, precision: str = "fp32", threads: int | None = None,
                 cache: Path | None = None) -> None:
        import openvino as ov

        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'int8' here, not {precision!r}")
        if precision == "int8" and cache is None:
            raise ValueError("int8 needs the cache folder that holds the quantised branches")
        self._ov = ov
        self.net = net
        self.cfg = net.cfg
        self.precision = precision
        self._core = ov.Core()
        # int8 layers run in int8 whatever the hint; the rest as in fp32.
        self._config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                        "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self.cache = cache
        self._digest: str | None = None
        self._compiled: dict[tuple, object] = {}
        self._lock = threading.Lock()
        # One infer request per thread and model: Dask runs several strips at once.
        self._local = threading.local()
        self.converted = 0  # branches traced and converted in this process (not loaded)
        # While not None, every branch call's inputs are appended here by key (calibration).
        self.record: dict[tuple, list] | None = None
        if precision == "int8":
            self._check_int8()

    # -- what predict_window uses, as GLNet has it ------------------------------

    @property
    def has_context_branch(self) -> bool:
        return self.net.has_context_branch

    def global_shape(self, height: int, width: int) -> tuple[int, int]:
        return self.net.global_shape(height, width)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs go to OpenVINO as contiguous float32 NCHW arrays."""
        return x.float().contiguous()

    def global_pyramid(self, image: torch.Tensor) -> Pyramid:
        return self._plain("global", image)

    def context_pyramid(self, image: torch.Tensor) -> Pyramid:
        if not self.net.has_context_branch:
            return self.global_pyramid(image)
        return self._plain("context", image)

    def local_pyramid(self, patches: torch.Tensor, context: Pyramid) -> Pyramid:
        out = self._run("local", [patches, *context.maps()])
        return Pyramid(*_split(out[:16]), ps3=out[16])

    def refined_pyramid(self, image: torch.Tensor, merged: Pyramid) -> Pyramid:
        out = self._run("refined", [image, *merged.maps()])
        return Pyramid(*_split(out[:16]), ps3=out[16])

    def aggregate(self, local_ps3: torch.Tensor, global_ps3: torch.Tensor) -> torch.Tensor:
        # One 3x3 conv: torch runs it as fast, and it keeps the module tiny.
        return self.net.aggregate(local_ps3, global_ps3)

    # -- compiling ----------------------------------------------------------------

    def _plain(self, kind: str, image: torch.Tensor) -> Pyramid:
        out = self._run(kind, [image])
        return Pyramid(*_split(out[:16]), ps3=out[16], logits=out[17])

    def _module(self, kind: str) -> nn.Module:
        n = self.net
        if kind == "global":
            return _Plain(n.global_backbone, n.global_decoder)
        if kind == "context":
            return _Plain(n.context_backbone, n.context_decoder)
        if kind == "local":
            return _WithContext(n.local_backbone, n.local_decoder)
        return _WithContext(n.global_backbone, n.global_decoder)  # refined

    def _run(self, kind: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        arrays = [t.detach().float().contiguous().numpy() for t in inputs]
        key = (kind, *(a.shape for a in arrays))
        if self.record is not None:
            self.record.setdefault(key, []).append([a.copy() for a in arrays])
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key)
                if compiled is None:
                    compiled = self._compile(key, inputs)
                    self._compiled[key] = compiled
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(key)
        if request is None:
            request = requests[key] = compiled.create_infer_request()
        request.infer(arrays)
        # Copies: the request's output buffers are overwritten by its next call.
        return [torch.from_numpy(request.get_output_tensor(i).data.copy())
                for i in range(len(compiled.outputs))]

    def _compile(self, key: tuple, inputs: list[torch.Tensor]):
        if self.precision == "int8":
            path = self._cache_path(key, "int8")
            if path.is_file() and path.with_suffix(".bin").is_file():
                return self._core.compile_model(self._core.read_model(str(path)), "CPU",
                                                self._config)
            # A shape quantize did not calibrate (a scene smaller than a window): f32.
        return self._core.compile_model(self.fp32_model(key, inputs), "CPU", self._config)

    def use(self, key: tuple, model) -> None:
        """Run branch call ``key`` with the OpenVINO ``model`` given (a quantised one)."""
        with self._lock:
            self._compiled[key] = self._core.compile_model(model, "CPU", self._config)
            self._local = threading.local()  # requests of the model it replaces

    def fp32_model(self, key: tuple, inputs: list[torch.Tensor]):
        """The OpenVINO model of branch call ``key`` in f32: from the cache, else converted."""
        ov = self._ov
        path = self._cache_path(key)
        model = None
        if path is not None and path.is_file() and path.with_suffix(".bin").is_file():
            try:
                model = self._core.read_model(str(path))
            except RuntimeError:
                model = None  # a damaged cache entry: convert again and replace it
        if model is None:
            module = self._module(key[0]).eval()
            # Tracing warns of deprecation and of shape tests frozen into the
            # graph; the shapes are static here, so neither concerns the user.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = ov.convert_model(module, example_input=tuple(
                    t.detach().float().contiguous() for t in inputs))
            self.converted += 1
            if path is not None:
                _save(ov, model, path)
        return model

    @property
    def digest(self) -> str:
        """``weights_digest`` of the network (computed once)."""
        if self._digest is None:
            self._digest = weights_digest(self.net)
        return self._digest

    def _cache_path(self, key: tuple, variant: str = "f32") -> Path | None:
        if self.cache is None:
            return None
        shapes = "|".join("x".join(map(str, s)) for s in key[1:])
        name = hashlib.sha256(f"{key[0]}|{shapes}|{self._ov.__version__}".encode()).hexdigest()
        prefix = "" if variant == "f32" else f"{variant}-"
        return self.cache / self.digest[:16] / f"{prefix}{key[0]}-{name[:16]}.xml"

    def save_int8(self, key: tuple, model) -> Path:
        """Keep the quantised OpenVINO ``model`` of branch call ``key`` in the cache folder."""
        path = self._cache_path(key, "int8")
        _save(self._ov, model, path)
        if not path.is_file():
            raise OSError(f"{path}: could not be written")
        return path

    def _check_int8(self) -> None:
        import json

        from ..errors import GlnetError

        manifest = self.cache / INT8_MANIFEST
        try:
            record = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise GlnetError(f"{manifest}: no int8 record of this model: run glnet quantize "
                             "MODEL SCENE first") from None
        if record.get("weights") != self.digest:
            raise GlnetError(f"{manifest}: its int8 branches were made from other weights "
                             "than this model's: run glnet quantize MODEL SCENE again")


def _split(maps: list[torch.Tensor]) -> tuple[list, list, list, list]:
    return maps[0:4], maps[4:8], maps[8:12], maps[12:16]


def weights_digest(net: nn.Module) -> str:
    """SHA-256 of a network's parameters and buffers (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save(ov, model, path: Path) -> None:
    """Save a converted model to ``path`` (.xml and .bin) atomically; skip if not writable."""
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.xml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        # The weights first: a reader that finds the .xml finds its .bin.
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    except (OSError, RuntimeError):
        for leftover in (tmp, tmp.with_suffix(".bin")):
            try:
                leftover.unlink()
            except OSError:
                pass
