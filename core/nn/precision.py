"""Numeric precision of inference: fp32, or the network in bf16 under ``torch.autocast``.

``SegmentOptions.precision`` takes "fp32", "bf16", "auto" or "int8" (the
OpenVINO backend's quantised branches, ``glnet.nn.openvino``; torch's side of
such a run, the aggregation conv and the probabilities, stays fp32). "auto" is bf16
where the device computes it natively (a CPU with the ``avx512_bf16`` or
``amx_bf16`` flag in Linux's /proc/cpuinfo; a CUDA GPU for which torch reports
bf16 support without emulation) and fp32 elsewhere. bf16 asked for on a device
without native support is honoured (the user may want to reproduce a bf16 run)
with a warning that it is emulated and likely slower than fp32.

Only the network's layers run in bf16 (convolutions and matrix products are
what autocast lowers); class probabilities are formed, averaged over patches
and blended between windows in fp32. Model files and training do not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..config import DEFAULT_PRECISION, PRECISIONS  # noqa: F401  (defined with the options)

# CPU flags (Linux /proc/cpuinfo) of instructions that compute bf16 products natively.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Precision:
    """The precision a run uses, resolved for its device.

    Attributes:
        name: "fp32", "bf16" or "int8".
        requested: what was asked for ("fp32", "bf16", "auto" or "int8").
        native: the device computes bf16 natively (False for fp32 runs on
            devices without it, and for emulated bf16).
        warning: one line for the user when bf16 runs emulated, else None.
    """

    name: str
    requested: str
    native: bool
    warning: str | None = None


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> tuple[str, ...]:
    """The native-bf16 flags of this CPU (``BF16_CPU_FLAGS`` it has); () off Linux."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86; "Features" on arm64 (no such flags)
            flags = set(value.split())
            return tuple(f for f in BF16_CPU_FLAGS if f in flags)
    return ()


def cuda_bf16_native(device: str) -> bool:
    """Whether the CUDA device computes bf16 natively (compute capability 8.0 and later)."""
    import torch

    if not torch.cuda.is_available():
        return False
    index = torch.device(device).index
    major, _ = torch.cuda.get_device_capability(index)
    # torch.cuda.is_bf16_supported() also says True where bf16 is only emulated.
    return major >= 8


def resolve_precision(requested: str, device: str = "cpu",
                      cpuinfo: Path = CPUINFO) -> Precision:
    """What ``requested`` ("fp32", "bf16", "auto") means on ``device`` ("cpu", "cuda[:n]").

    Judged on this machine (``cpuinfo``: where a CPU's flags are read):
    ``segment`` resolves it where the run is planned (with Dask, on the
    client), so that every strip computes alike.
    """
    if requested not in PRECISIONS:
        from ..errors import OptionError

        raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if device.startswith("cuda"):
        native = cuda_bf16_native(device)
        where = f"{device} (compute capability below 8.0, or no GPU visible here)"
    else:
        native = bool(cpu_bf16_flags(cpuinfo))
        where = f"this CPU (no {' or '.join(BF16_CPU_FLAGS)} flag)"
    if requested == "int8":  # quantised OpenVINO branches: integer kernels on any x86 CPU
        return Precision("int8", requested, True)
    if requested == "fp32" or (requested == "auto" and not native):
        return Precision("fp32", requested, native)
    warning = None if native else (
        f"precision bf16 asked for, but {where} has no native bf16: it is emulated, and "
        "likely slower than fp32 (--precision auto or fp32 avoids it)")
    return Precision("bf16", requested, native, warning)


@contextmanager
def network_precision(name: str, device_type: str) -> Iterator[None]:
    """Run the enclosed network calls in precision ``name`` ("fp32" or "bf16") on ``device_type``.

    bf16 is ``torch.autocast(device_type, dtype=torch.bfloat16)``: layers that
    autocast lowers compute in bf16, others in their inputs' dtype. Callers
    convert what they turn into probabilities back to fp32. "int8" changes
    nothing in torch: its quantised layers are OpenVINO's (``nn.openvino``).
    """
    import torch

    if name not in ("fp32", "bf16", "int8"):
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'int8' here, not {name!r}")
    ctx = (torch.autocast(device_type, dtype=torch.bfloat16) if name == "bf16"
           else nullcontext())
    with ctx:
        yield
