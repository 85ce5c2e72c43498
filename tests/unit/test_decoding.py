"""Grouping prompts by token count, request order, one-at-a-time upscaling, the mask budget
and the logits cache's byte bound; on a recording fake runtime (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2serve.errors import PayloadTooLarge
from sam2serve.image.decoding import (
    check_mask_budget,
    decode_best,
    decode_grouped,
    full_logits,
    full_logits_stack,
    token_groups,
)
from sam2serve.image.prompts import prompt_key, to_batch
from sam2serve.image.schema import Box, Point, Prompt
from sam2serve.runtime.base import Decoded, Features, PromptBatch
from sam2serve.store.logits import LogitsCache

P = lambda x, y, pos=True: Point(x=x, y=y, positive=pos)  # noqa: E731
BOX = Box(x=10, y=10, width=4, height=4)


class RecordingRuntime:
    """Each prompt's logits depend only on its own tokens (as an exact decoder's do), and
    padding tokens poison the output, so a test sees any padding that reaches it."""

    model_id = "fake"
    device = torch.device("cpu")
    low_res_size = 4

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        n, k = prompts.labels.shape
        self.calls.append((n, k))
        pads = (prompts.labels == -1).sum(axis=1) if k > 1 else np.zeros(n)
        value = prompts.coords.sum(axis=(1, 2)) + prompts.labels.sum(axis=1) + 1000 * pads
        c = 3 if multimask else 1
        low = torch.as_tensor(value, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, c, 4, 4)
        scores = torch.arange(c, dtype=torch.float32).expand(n, c) + torch.as_tensor(
            value, dtype=torch.float32
        ).reshape(n, 1)
        return Decoded(low_res=low.clone(), scores=scores.clone())

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return low_res[:, :1, :1].expand(low_res.shape[0], *orig_hw).clone()


FEATURES = Features(torch.zeros(1), (), (6, 5))

PROMPTS = [
    Prompt(points=[P(1, 2)]),
    Prompt(box=BOX, points=[P(3, 4), P(5, 6, False)]),
    Prompt(),
    Prompt(points=[P(7, 8), P(9, 1)]),
    Prompt(box=BOX),
    Prompt(points=[P(2, 2)]),
]


def _alone(prompt: Prompt) -> float:
    runtime = RecordingRuntime()
    return float(runtime.decode(FEATURES, to_batch([prompt]), True).low_res[0, 0, 0, 0])


def test_token_groups_in_request_order() -> None:
    groups = token_groups(to_batch(PROMPTS).labels)
    assert {k: v.tolist() for k, v in groups.items()} == {0: [2], 1: [0, 5], 2: [3, 4], 4: [1]}


def test_mixed_prompts_equal_each_alone_one_call_per_token_count() -> None:
    runtime = RecordingRuntime()
    decoded = decode_grouped(runtime, FEATURES, to_batch(PROMPTS), True)
    assert sorted(runtime.calls) == [(1, 1), (1, 4), (2, 1), (2, 2)]
    got = decoded.low_res[:, 0, 0, 0].tolist()
    assert got == [_alone(p) for p in PROMPTS]
    assert decoded.scores.shape == (6, 3)


def test_uniform_batch_is_one_call_unchanged() -> None:
    runtime = RecordingRuntime()
    batch = to_batch([Prompt(points=[P(1, 1)]), Prompt(points=[P(2, 2)])])
    decode_grouped(runtime, FEATURES, batch, False)
    assert runtime.calls == [(2, 1)]


def test_mask_input_rows_follow_their_prompts() -> None:
    seen: list[np.ndarray] = []

    class Capture(RecordingRuntime):
        def decode(self, features, prompts, multimask):  # type: ignore[no-untyped-def]
            seen.append(prompts.mask_input[:, 0, 0, 0].copy())
            return super().decode(features, prompts, multimask)

    base = to_batch(PROMPTS[:2])
    masks = np.arange(2, dtype=np.float32).reshape(2, 1, 1, 1) * np.ones((1, 1, 4, 4))
    batch = PromptBatch(base.coords, base.labels, masks.astype(np.float32), np.array([1, 0], bool))
    decode_grouped(Capture(), FEATURES, batch, True)
    assert sorted(float(s[0]) for s in seen) == [0.0, 1.0]


def test_best_and_full_logits_one_prompt_at_a_time() -> None:
    runtime = RecordingRuntime()
    chosen, scores = decode_best(runtime, FEATURES, to_batch(PROMPTS[:2]), True)
    assert chosen.shape == (2, 4, 4) and scores.shape == (2,)
    frames = list(full_logits(runtime, chosen, (6, 5)))
    assert [f.shape for f in frames] == [(6, 5), (6, 5)]
    np.testing.assert_array_equal(np.stack(frames), full_logits_stack(runtime, chosen, (6, 5)))


@pytest.mark.parametrize(
    ("prompts", "hw", "budget", "refused"),
    [
        (16, (6000, 6000), 160_000_000, True),
        (4, (6000, 6000), 160_000_000, False),
        (64, (1080, 1920), 160_000_000, False),
        (0, (100, 100), 10_000, False),  # no prompts still decodes one prediction
        (2, (100, 100), 10_000, True),
        (1, (200, 200), 10_000, True),  # even one prompt is over: downscale
        (1000, (6000, 6000), 0, False),  # 0 = no budget
    ],
)
def test_mask_budget(prompts: int, hw: tuple[int, int], budget: int, refused: bool) -> None:
    if not refused:
        check_mask_budget(prompts, hw, budget)
        return
    with pytest.raises(PayloadTooLarge) as info:
        check_mask_budget(prompts, hw, budget)
    message = info.value.message
    assert "SAM2SERVE_MAX_MASK_PIXELS" in message and f"{budget:,}" in message
    assert info.value.field == "prompts" and info.value.status == 413
    fits = budget // (hw[0] * hw[1])
    assert (f"at most {fits} prompts" in message) if fits else ("downscale" in message)


def test_logits_cache_is_bounded_by_bytes() -> None:
    one = np.zeros((1, 256, 256), np.float32)  # 256 KiB
    cache = LogitsCache(max_entries=1000, max_bytes=3 * one.nbytes)
    img = ("ns", "m", "hash")
    keys = [[prompt_key(Prompt(points=[P(i, i)]))] for i in range(5)]
    for k in keys:
        cache.save(img, k, one)
    assert len(cache) == 3 and cache.bytes_used == 3 * one.nbytes
    cache.save(img, keys[4], np.zeros((4, 256, 256), np.float32))  # over the budget
    assert len(cache) == 2 and cache.bytes_used == 2 * one.nbytes
    other = ("ns", "m", "other")  # another image's sets evict these; the bytes stay exact
    for k in keys[:3]:
        cache.save(other, k, one)
    assert len(cache) == 3 and cache.bytes_used == 3 * one.nbytes
