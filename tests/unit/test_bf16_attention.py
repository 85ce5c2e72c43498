"""The bf16 attention kernel (OpenVINO) against torch's fp32 attention, which calls it routes,
and that routing stays in its thread and its `with` block."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from sam2serve.runtime.bf16_attention import Bf16Attention, eligible, routed

#: bf16 inputs and output, fp32 softmax inside: the error torch's own bf16 attention has.
REL_ERROR = 1.5e-2


def _qkv(lead: tuple[int, ...], lq: int, lk: int, d: int, dv: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(lq * 31 + lk)
    q = torch.randn(*lead, lq, d, generator=g)
    k = torch.randn(*lead, lk, d, generator=g)
    v = torch.randn(*lead, lk, dv, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.fixture(scope="module")
def kernel() -> Bf16Attention:
    return Bf16Attention(threads=2, min_tokens=1)


@pytest.mark.parametrize(
    ("lead", "lq", "lk", "d", "dv", "dtype"),
    [
        ((1, 4), 64, 64, 32, 32, torch.float32),  # self-attention, (B, heads, L, d)
        ((2, 3), 40, 96, 16, 16, torch.bfloat16),  # cross-attention, bf16 in
        ((6,), 50, 50, 8, 24, torch.float32),  # rank 3, value depth != key depth
        ((2, 2, 2), 17, 33, 64, 64, torch.float32),  # rank 5, odd lengths
    ],
)
def test_kernel_matches_fp32_attention(kernel, lead, lq, lk, d, dv, dtype) -> None:
    q, k, v = _qkv(lead, lq, lk, d, dv, dtype)
    want = sdpa(q.float(), k.float(), v.float())
    got = kernel(q, k, v)
    assert got.shape == want.shape and got.dtype == dtype
    assert float((got.float() - want).norm() / want.norm()) < REL_ERROR


PLAIN = _qkv((1, 2), 600, 600, 16, 16, torch.float32)


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (PLAIN, {}, True),
        ((*PLAIN, torch.zeros(600, 600, dtype=torch.bool)), {}, False),  # a mask
        ((*PLAIN, None, 0.1), {}, False),  # dropout
        ((*PLAIN, None, 0.0, True), {}, False),  # causal
        (PLAIN, {"scale": 0.5}, False),  # a custom scale
        (PLAIN, {"enable_gqa": True}, False),
        (_qkv((1, 2), 100, 600, 16, 16, torch.float32), {}, False),  # few queries
        (_qkv((1, 2), 600, 32, 16, 16, torch.float32), {}, False),  # few keys (text)
        (tuple(t.half() for t in PLAIN), {}, False),  # fp16: not this kernel's
        ((PLAIN[0], PLAIN[1][:, :1], PLAIN[2][:, :1]), {}, False),  # heads differ (broadcast)
    ],
)
def test_which_calls_are_eligible(args, kwargs, expected) -> None:
    assert eligible(args, kwargs, min_tokens=512) is expected


def test_routed_sends_plain_calls_to_the_kernel_and_keeps_the_rest(kernel) -> None:
    q, k, v = _qkv((1, 2), 32, 32, 16, 16, torch.float32)
    mask = torch.ones(32, 32, dtype=torch.bool).tril()
    exact_masked = sdpa(q, k, v, attn_mask=mask)
    exact_plain = sdpa(q, k, v)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(1, 20, 32)
    with torch.inference_mode():
        mha_exact = mha(x, x, x, need_weights=False)[0]
        with routed(kernel) as mode:
            plain = sdpa(q, k, v)
            masked = sdpa(q, k, v, attn_mask=mask)
            mha_routed = mha(x, x, x, need_weights=False)[0]  # its inner call is seen too
        after = sdpa(q, k, v)
    assert mode is not None and mode.routed == 2
    assert not torch.equal(plain, exact_plain)  # really the bf16 kernel
    assert float((plain - exact_plain).norm() / exact_plain.norm()) < REL_ERROR
    assert torch.equal(masked, exact_masked)  # torch's, untouched
    assert float((mha_routed - mha_exact).norm() / mha_exact.norm()) < REL_ERROR
    assert torch.equal(after, exact_plain)  # nothing left behind


def test_routing_stays_in_its_thread(kernel) -> None:
    q, k, v = _qkv((1, 2), 48, 48, 16, 16, torch.float32)
    want = sdpa(q, k, v)
    seen: list[torch.Tensor] = []
    inside, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        inside.wait(5)
        seen.append(sdpa(q, k, v))
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with routed(kernel) as mode:
        inside.set()
        done.wait(5)
    worker.join(5)
    assert mode is not None and mode.routed == 0
    assert torch.equal(seen[0], want)


def test_routed_none_changes_nothing() -> None:
    q, k, v = _qkv((1, 2), 600, 600, 16, 16, torch.float32)
    with routed(None) as mode:
        got = sdpa(q, k, v)
    assert mode is None and torch.equal(got, sdpa(q, k, v))
