"""SAM 3's concept heads (text encoder, fusion encoder, decoder, segmentation head) in bf16 on
a CPU with native bf16, attention excepted.

Where a phrase's time goes on the real architecture (docs/benchmarks.md, "SAM 3 phrase: where
the time goes"): the fusion encoder's self-attention over the 72 x 72 image tokens (~30 %),
the 200-query decoder (~20 %, mostly small ops), the pixel decoder's 3x3 convolutions at
144² and 288² (~12 %), the text encoder (~14 %), the encoder's FFN (~8 %).

Why plain bf16 autocast of the heads was slower than fp32 (1.24x against 1.01x Meta's): torch's
CPU flash-attention kernel is slower in bf16 than in fp32 at these shapes (8 heads x 5184
tokens x 32 dims: 0.91 s against 0.63 s per call, measured on the Zen 4 box), and the encoder
calls it 6 times per phrase. Convolutions and linear layers do gain (the 288² 3x3 conv 2.5 s
-> 0.8-1.0 s, the FFN's linears 1.7x). So here autocast runs everything but attention:
every `nn.MultiheadAttention` of the model runs with autocast off (fp32 in, fp32 out) while
`bf16_heads()` is active in this thread, and the rest as autocast decides.

The hooks are installed once per model and do nothing outside `bf16_heads()` (a context
variable), so the exact runtime sharing the same modules stays exact, also from another thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import torch

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("sam3_bf16_heads", default=False)
_HOOKED = "_sam2serve_fp32_attention"
_stacks = threading.local()


def _stack() -> list[contextlib.AbstractContextManager]:
    if not hasattr(_stacks, "items"):
        _stacks.items = []
    return _stacks.items


def _attention_pre(module: torch.nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
    if not _ACTIVE.get():
        return None
    off = torch.autocast("cpu", enabled=False)
    off.__enter__()
    _stack().append(off)
    # inputs may come straight out of a bf16 op (e.g. a linear): attention computes in fp32
    up = [a.float() if torch.is_tensor(a) and a.dtype == torch.bfloat16 else a for a in args]
    kw = {
        k: v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16 else v
        for k, v in kwargs.items()
    }
    return tuple(up), kw


def _attention_post(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
    if _ACTIVE.get():
        _stack().pop().__exit__(None, None, None)


def install_fp32_attention(model: torch.nn.Module) -> None:
    """Hook every `nn.MultiheadAttention` of `model` (once): inside `bf16_heads()` it runs with
    autocast off; elsewhere the hooks return at once and change nothing."""
    if getattr(model, _HOOKED, False):
        return
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.register_forward_pre_hook(_attention_pre, with_kwargs=True)
            module.register_forward_hook(_attention_post, with_kwargs=True, always_call=True)
    setattr(model, _HOOKED, True)


@contextlib.contextmanager
def bf16_heads(device: torch.device) -> Iterator[None]:
    """bf16 autocast for this thread's SAM 3 calls, attention kept fp32 (models hooked by
    `install_fp32_attention`)."""
    token = _ACTIVE.set(True)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        _ACTIVE.reset(token)
