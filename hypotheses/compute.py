"""Where claims compute: the device of ``$NTKBENCH_DEVICE`` (``cpu`` by default).

Kernels are formed on the device and come back to the CPU (float64 statistics, eigensolvers,
clustering and records stay there), so a claim's code reads the same on every device::

    kernels = on_cpu(entk(*to_device(model, inputs), by_layer=True))
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from testbeds.loop import resolve_device


def to_device(model: nn.Module, *tensors: Tensor) -> tuple:
    """``model`` and ``tensors`` on the compute device. The caller's model is left where it
    is: a copy moves when the device differs."""
    device = resolve_device()
    if next(model.parameters()).device != device:
        model = copy.deepcopy(model).to(device)
    return (model, *(t.to(device) for t in tensors))


def on_cpu(value: Any) -> Any:
    """Tensors (alone, in dicts, lists, tuples or dataclasses) moved to the CPU."""
    if isinstance(value, Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_cpu(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: on_cpu(getattr(value, f.name)) for f in dataclasses.fields(value)}
        )
    return value


def device_name() -> str:
    """The compute device, for records: ``"cpu"`` or ``"cuda:<GPU name>"``."""
    device = resolve_device()
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
