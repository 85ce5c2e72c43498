"""SAM 3's hard-coded "cuda", mapped to the runtime's device, only while SAM 3 code runs.

Meta's `sam3` package creates tensors with `device="cuda"` in a few places (position-encoding
and decoder-coordinate caches at build time, `vl_combiner.forward_text`'s default) and calls
`pin_memory()` (geometry encoder), which fail on a machine without CUDA. Rather than patch
the package globally at import time, `on_device(device)` is a torch function mode entered
around each call into SAM 3 code: inside it a "cuda" device argument means `device`, and
`pin_memory()` / `.cuda()` are no-ops / `.to(device)` when `device` is not CUDA.
Nothing changes outside the `with` block, and nothing at all on a CUDA device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def _is_cuda(value: Any) -> bool:
    if isinstance(value, str):
        return value == "cuda" or value.startswith("cuda:")
    return isinstance(value, torch.device) and value.type == "cuda"


class _CudaToDevice(TorchFunctionMode):
    """Rewrites device="cuda" to the target device; pin_memory() -> self; .cuda() -> .to()."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.cuda:
            return args[0].to(self.device)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = self.device
        if func is torch.Tensor.to and args and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], self.device, *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """Run SAM 3 code with its hard-coded "cuda" meaning `device` (no-op on CUDA)."""
    if device.type == "cuda":
        yield
        return
    with _CudaToDevice(device):
        yield
