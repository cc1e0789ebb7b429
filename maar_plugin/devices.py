"""Which device computes: ``auto`` means a CUDA GPU where torch finds one, else the CPU."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from maar_plugin.errors import MaarError


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a torch device; CUDA asked for where there is none is a
    one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise MaarError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaarError(f"--device {name} was asked for, but torch sees no CUDA device here; use --device cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """The card or processor that computes, for results tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU ({line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
