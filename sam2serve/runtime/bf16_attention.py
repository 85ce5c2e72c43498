"""Scaled dot-product attention on OpenVINO's CPU kernel in bf16, for SAM 3's fast paths.

Why: torch's CPU flash attention is no faster in bf16 than in fp32 (it computes in fp32
inside), and on the real SAM 3 architecture attention is ~40 % of the int8 trunk's time (4
global blocks of 16 heads x 5184 tokens x 64 dims, 28 windowed blocks of 9 x 16 x 576 x 64)
and the fusion encoder's 8 x 5184 x 32 self-attention ~30 % of a phrase. OpenVINO's kernel
runs the two matmuls on the CPU's bf16 dot-product units: measured on a Zen 4 (AVX512-BF16),
0.38 s against torch's 0.72 s per global block, 0.046 s against 0.088-0.104 s per windowed
block, 0.115 s against 0.20 s per fusion-encoder layer (docs/benchmarks.md).

Error: relative L2 ~5e-3 against fp32 attention (bf16 inputs and output, fp32 softmax and
accumulation inside), the same order as torch's own bf16 attention.

How: `routed(kernel)` is a dispatch mode for the calling thread (torch keeps mode stacks per
thread) that sends each plain `aten.scaled_dot_product_attention` call (no mask, no dropout,
not causal, default scale, big enough to pay for the call) to the kernel and lets everything
else run as usual. The model's modules are untouched, so an exact runtime sharing them on
another thread stays exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import openvino as ov
import torch
from openvino import opset13 as ops
from torch.utils._python_dispatch import TorchDispatchMode

#: Fewer query or key tokens than this and torch keeps the call: OpenVINO's kernel wins on
#: long sequences on both sides (576 x 576 windows: 2.2x) but loses on short queries against a
#: long memory (the decoder's 200 queries x 5184 image tokens: 21.6 ms against 9.1 ms) and on
#: tiny ones, where its fixed cost (~0.25 ms per call) dominates.
MIN_TOKENS = 512

_SDPA = torch.ops.aten.scaled_dot_product_attention.default


class Bf16Attention:
    """softmax(q k^T / sqrt(d)) v for q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv) with the
    same leading dims; returns (..., Lq, dv) in q's dtype, computed in bf16 on OpenVINO's CPU
    kernel. Thread-safe: one infer request per call on a shared compiled graph."""

    def __init__(self, threads: int | None = None, min_tokens: int = MIN_TOKENS) -> None:
        self.min_tokens = min_tokens
        params = [ops.parameter(ov.PartialShape.dynamic(4), ov.Type.bf16, name=n) for n in "qkv"]
        graph = ov.Model([ops.scaled_dot_product_attention(*params, causal=False)], params)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(graph, "CPU", config)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        lead, lq = q.shape[:-2], q.shape[-2]
        # batch and heads are independent: fold every leading dim into the kernel's head axis
        q4, k4, v4 = (
            t.to(torch.bfloat16).reshape(1, -1, t.shape[-2], t.shape[-1]).contiguous()
            for t in (q, k, v)
        )
        out = torch.empty((*q4.shape[:-1], v.shape[-1]), dtype=torch.bfloat16)
        request = self._compiled.create_infer_request()
        request.set_output_tensor(0, _shared(out))
        request.infer([_shared(q4), _shared(k4), _shared(v4)])
        return out.reshape(*lead, lq, v.shape[-1]).to(q.dtype)


def _shared(t: torch.Tensor) -> ov.Tensor:
    """An OpenVINO bf16 tensor over `t`'s memory (contiguous bf16; numpy has no bf16, so the
    bytes travel as int16)."""
    return ov.Tensor(t.view(torch.int16).numpy(), list(t.shape), ov.Type.bf16)


def eligible(args: tuple[Any, ...], kwargs: dict[str, Any], min_tokens: int) -> bool:
    """Whether an `aten.scaled_dot_product_attention` call is the plain kind the kernel runs:
    CPU float q/k/v of rank >= 3 with equal leading dims, no mask, no dropout, not causal,
    default scale, no grouped-query heads, and at least `min_tokens` queries and keys."""
    q, k, v = args[:3]
    extra = dict(zip(("attn_mask", "dropout_p", "is_causal"), args[3:], strict=False))
    extra.update(kwargs)
    if extra.get("attn_mask") is not None or extra.get("dropout_p", 0.0) != 0.0:
        return False
    if extra.get("is_causal") or extra.get("scale") is not None or extra.get("enable_gqa"):
        return False
    floats = (torch.float32, torch.bfloat16)
    if any(t.device.type != "cpu" or t.dtype not in floats for t in (q, k, v)):
        return False
    if q.dim() < 3 or not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return False
    same_depth = q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2]
    return same_depth and min(q.shape[-2], k.shape[-2]) >= min_tokens


class _Route(TorchDispatchMode):
    def __init__(self, kernel: Bf16Attention) -> None:
        super().__init__()
        self.kernel = kernel
        self.routed = 0  # calls sent to the kernel (tests read it)

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is _SDPA and eligible(args, kwargs, self.kernel.min_tokens):
            self.routed += 1
            return self.kernel(*args[:3])
        return func(*args, **kwargs)


@contextlib.contextmanager
def routed(kernel: Bf16Attention | None) -> Iterator[_Route | None]:
    """This thread's plain attention calls go to `kernel` while inside (None: no change)."""
    if kernel is None:
        yield None
        return
    with _Route(kernel) as mode:
        yield mode
