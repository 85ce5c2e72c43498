"""MicroBatcher: concurrent submits become one batched call; limits and errors."""

from __future__ import annotations

import asyncio

import pytest

from sam2serve.errors import Unavailable
from sam2serve.scheduling.batching import MicroBatcher
from sam2serve.scheduling.lanes import Lane


def _batcher(calls: list[list[int]], **kw: float) -> MicroBatcher[int, int]:
    def square_all(items: list[int]) -> list[int]:
        calls.append(list(items))
        if -1 in items:
            raise RuntimeError("bad item")
        return [i * i for i in items]

    lane = Lane("embed", 1, 8, retry_after_s=1)
    opts = {"max_batch": 4, "window_s": 0.02, "max_pending": 8, **kw}
    return MicroBatcher(square_all, lane, **opts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "batches"),
    [(1, [1]), (3, [3]), (4, [4]), (6, [4, 2]), (8, [4, 4])],
)
def test_concurrent_submits_are_batched(n: int, batches: list[int]) -> None:
    calls: list[list[int]] = []
    batcher = _batcher(calls)

    async def run() -> list[int]:
        return await asyncio.gather(*(batcher.submit(i) for i in range(n)))

    assert asyncio.run(run()) == [i * i for i in range(n)]
    assert [len(c) for c in calls] == batches == batcher.batches


def test_overflow_is_503_and_errors_reach_every_caller() -> None:
    calls: list[list[int]] = []
    batcher = _batcher(calls, max_pending=2, max_batch=8)

    async def run() -> None:
        first = [asyncio.create_task(batcher.submit(i)) for i in (-1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await batcher.submit(3)
        results = await asyncio.gather(*first, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(run())
    assert calls == [[-1, 2]]
