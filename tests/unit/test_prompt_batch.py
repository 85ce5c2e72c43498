"""Prompt padding into the runtime batch, and strict-subset matching for the logits cache."""

from __future__ import annotations

import numpy as np
import pytest

from sam2serve.image.prompts import prompt_key, to_batch
from sam2serve.image.schema import Box, Point, Prompt
from sam2serve.store.logits import LogitsCache, match_subset

P = lambda x, y, pos=True: Point(x=x, y=y, positive=pos)  # noqa: E731


@pytest.mark.parametrize(
    ("prompts", "coords", "labels"),
    [
        ([], [[[0, 0]]], [[-1]]),
        ([Prompt(points=[P(5, 6)])], [[[5, 6]]], [[1]]),
        (
            [Prompt(box=Box(x=10, y=20, width=4, height=6))],
            [[[8, 17], [12, 23]]],
            [[2, 3]],
        ),
        (
            [
                Prompt(points=[P(1, 2, False)]),
                Prompt(box=Box(x=10, y=10, width=2, height=2), points=[P(3, 4)]),
            ],
            [[[1, 2], [0, 0], [0, 0]], [[9, 9], [11, 11], [3, 4]]],
            [[0, -1, -1], [2, 3, 1]],
        ),
        ([Prompt(points=[]), Prompt()], [[[0, 0]], [[0, 0]]], [[-1], [-1]]),
    ],
)
def test_to_batch(prompts, coords, labels) -> None:  # type: ignore[no-untyped-def]
    batch = to_batch(prompts)
    np.testing.assert_array_equal(batch.coords, np.array(coords, dtype=np.float32))
    np.testing.assert_array_equal(batch.labels, np.array(labels, dtype=np.int32))
    assert batch.coords.dtype == np.float32 and batch.labels.dtype == np.int32


A = Prompt(points=[P(1, 1)])
AB = Prompt(points=[P(1, 1), P(2, 2, False)])
BOX = Prompt(box=Box(x=5, y=5, width=2, height=2))
BOX_A = Prompt(box=Box(x=5, y=5, width=2, height=2), points=[P(1, 1)])


@pytest.mark.parametrize(
    ("earlier", "current", "expected"),
    [
        ([A], [AB], [0]),
        ([A], [A], None),  # equal is not a strict subset
        ([AB], [A], None),
        ([A], [BOX, AB], [None, 0]),
        ([BOX], [BOX_A], [0]),
        ([A], [BOX_A], None),  # box differs
        ([A, BOX], [BOX_A, AB], [1, 0]),
        ([A, A], [AB], None),  # two earlier prompts cannot share one current prompt
    ],
)
def test_match_subset(earlier, current, expected) -> None:  # type: ignore[no-untyped-def]
    got = match_subset([prompt_key(p) for p in earlier], [prompt_key(p) for p in current])
    assert got == expected


def test_logits_cache_prefers_largest_subset_and_maps_rows() -> None:
    cache = LogitsCache(10)
    img = ("ns", "m", "hash")
    one = np.full((1, 4, 4), 1.0, np.float32)
    two = np.full((1, 4, 4), 2.0, np.float32)
    cache.save(img, [prompt_key(A)], one)
    cache.save(img, [prompt_key(AB)], two)
    abc = Prompt(points=[P(1, 1), P(2, 2, False), P(3, 3)])
    mask, has = cache.load(img, [prompt_key(BOX), prompt_key(abc)])
    assert has.tolist() == [False, True]
    assert mask.shape == (2, 1, 4, 4) and mask[1].max() == 2.0 and mask[0].max() == 0.0
    assert cache.load(("ns", "m", "other"), [prompt_key(abc)]) is None
    assert cache.load(img, [prompt_key(A)]) is None
