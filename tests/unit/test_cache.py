"""EmbeddingCache: byte budget, LRU order, single-flight, id binding, namespaces."""

from __future__ import annotations

import asyncio

import pytest
import torch

from sam2serve.runtime.base import Features
from sam2serve.store.local import EmbeddingCache, EntryKey, IdKey


def feats(n_floats: int, fill: float = 0.0) -> Features:
    """Features of exactly 4 * n_floats bytes."""
    return Features(torch.full((1, n_floats), fill), (), (1, 1))


def key(content: str, ns: str = "public", model: str = "m") -> EntryKey:
    return EntryKey(ns, model, content)


async def put(
    cache: EmbeddingCache, content: str, size: int, image_id: str | None = None, ns: str = "public"
) -> Features:
    async def compute() -> Features:
        return feats(size)

    got, _ = await cache.get_or_compute(key(content, ns), image_id or content, compute)
    return got


@pytest.mark.parametrize(
    ("budget", "sizes", "kept"),
    [
        (400, [25, 25, 25], ["a", "b", "c"]),  # 100 bytes each: all fit
        (250, [25, 25, 25], ["b", "c"]),  # the oldest goes
        (100, [25, 25, 25], ["c"]),  # exactly the budget
        (99, [25, 25, 25], []),  # each alone is over budget: nothing kept
        (250, [50, 10, 10], ["b", "c"]),  # the 200-byte entry goes to make room
    ],
)
def test_byte_budget(budget: int, sizes: list[int], kept: list[str]) -> None:
    cache = EmbeddingCache(budget)

    async def run() -> None:
        for name, size in zip("abc", sizes, strict=True):
            await put(cache, name, size)

    asyncio.run(run())
    present = [n for n in "abc" if cache.lookup(IdKey("public", "m", n))]
    assert present == kept
    assert cache.bytes_used <= budget
    assert cache.bytes_used == sum(4 * s for n, s in zip("abc", sizes, strict=True) if n in kept)


def test_lookup_refreshes_lru_order() -> None:
    cache = EmbeddingCache(250)

    async def run() -> None:
        await put(cache, "a", 25)
        await put(cache, "b", 25)
        assert cache.lookup(IdKey("public", "m", "a"))
        await put(cache, "c", 25)

    asyncio.run(run())
    assert cache.lookup(IdKey("public", "m", "a")) is not None
    assert cache.lookup(IdKey("public", "m", "b")) is None


def test_single_flight_and_failures_not_cached() -> None:
    cache = EmbeddingCache(10_000)
    calls = 0

    async def slow() -> Features:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return feats(4)

    async def boom() -> Features:
        raise RuntimeError("encoder failed")

    async def run() -> None:
        results = await asyncio.gather(
            *(cache.get_or_compute(key("x"), "x", slow) for _ in range(10))
        )
        assert calls == 1
        assert [cached for _, cached in results].count(False) == 1
        with pytest.raises(RuntimeError):
            await cache.get_or_compute(key("y"), "y", boom)
        assert cache.lookup(IdKey("public", "m", "y")) is None
        _, cached = await cache.get_or_compute(key("y"), "y", slow)
        assert not cached and calls == 2

    asyncio.run(run())


def test_id_is_bound_to_content_and_namespaces_are_separate() -> None:
    cache = EmbeddingCache(10_000)

    async def run() -> None:
        await put(cache, "hash-1", 4, image_id="photo")
        await put(cache, "hash-2", 4, image_id="photo")  # same id, new pixels
        entry, _ = cache.lookup(IdKey("public", "m", "photo"))
        assert entry.content_hash == "hash-2"
        await put(cache, "hash-3", 4, image_id="theirs", ns="key:abc")
        assert cache.lookup(IdKey("public", "m", "theirs")) is None
        assert cache.lookup(IdKey("key:abc", "m", "theirs")) is not None
        assert cache.lookup(IdKey("key:abc", "other-model", "theirs")) is None

    asyncio.run(run())


def test_failed_compute_leaves_no_id_bound() -> None:
    """Client-chosen ids of failed embeds must not grow the id map."""
    cache = EmbeddingCache(10_000)

    async def boom() -> Features:
        raise RuntimeError("encoder failed")

    async def run() -> None:
        await put(cache, "old", 4, image_id="photo")
        for i in range(50):
            with pytest.raises(RuntimeError):
                await cache.get_or_compute(key(f"bad-{i}"), f"id-{i}", boom)
        with pytest.raises(RuntimeError):  # the id now names other pixels, which failed
            await cache.get_or_compute(key("new"), "photo", boom)

    asyncio.run(run())
    assert cache.ids_bound == 0
    assert cache.lookup(IdKey("public", "m", "photo")) is None


def test_cancelled_leader_does_not_fail_its_waiters() -> None:
    cache = EmbeddingCache(10_000)
    calls = 0

    async def slow() -> Features:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return feats(4)

    async def run() -> None:
        leader = asyncio.create_task(cache.get_or_compute(key("x"), "x", slow))
        await asyncio.sleep(0.01)
        waiters = [asyncio.create_task(cache.get_or_compute(key("x"), "w", slow)) for _ in range(3)]
        await asyncio.sleep(0.01)
        leader.cancel()
        results = await asyncio.gather(*waiters)
        assert all(f.nbytes == 16 for f, _ in results)
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(run())
    assert calls == 1
    assert cache.lookup(IdKey("public", "m", "w")) is not None


def test_last_caller_gone_drops_work_not_started() -> None:
    cache = EmbeddingCache(10_000)

    async def run() -> None:
        gate = asyncio.Event()
        ran = []

        async def queued() -> Features:
            await gate.wait()  # stands for the wait in the embed lane
            ran.append(1)
            return feats(4)

        callers = [
            asyncio.create_task(cache.get_or_compute(key("x"), "x", queued)) for _ in range(2)
        ]
        await asyncio.sleep(0.01)
        for c in callers:
            c.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        gate.set()
        await asyncio.sleep(0.01)
        assert ran == []
        assert len(cache) == 0 and not cache._inflight
        # a new caller computes afresh
        got, cached = await cache.get_or_compute(key("x"), "x", lambda: _ready(feats(4)))
        assert not cached and got.nbytes == 16

    asyncio.run(run())


async def _ready(value: Features) -> Features:
    return value


def _held(cache: EmbeddingCache, ns: str, names: str) -> str:
    return "".join(n for n in names if cache.lookup(IdKey(ns, "m", n)))


@pytest.mark.parametrize(
    ("share", "b_kept", "a_kept"),
    [
        # each entry 100 bytes, budget 1000: B keeps its 3 (within its 50 % share) while A
        # floods 20 images through the other 700 bytes, evicting only its own
        (0.5, "abc", "nopqrst"),
        # B is over a 20 % share, but so is A: the one storing pays with its own images
        (0.2, "abc", "nopqrst"),
    ],
)
def test_a_flood_of_one_namespace_evicts_its_own_images(
    share: float, b_kept: str, a_kept: str
) -> None:
    cache = EmbeddingCache(1000, key_share=share)
    flood = "abcdefghijklmnopqrst"

    async def run() -> None:
        for name in "abc":
            await put(cache, name, 25, ns="B")
        for name in flood:
            await put(cache, name, 25, ns="A")

    asyncio.run(run())
    assert _held(cache, "B", "abc") == b_kept
    assert _held(cache, "A", flood) == a_kept
    assert cache.bytes_used == 1000 == cache.bytes_of("A") + cache.bytes_of("B")


def test_a_namespace_over_its_share_is_evicted_first_when_another_stores() -> None:
    cache = EmbeddingCache(1000, key_share=0.5)

    async def run() -> None:
        for name in "abcdefgh":  # A alone: the whole cache is its to use (8 of 10)
            await put(cache, name, 25, ns="A")
        for name in "xyz":  # B stores 3: A (over its share) loses its oldest, not B
            await put(cache, name, 25, ns="B")

    asyncio.run(run())
    assert _held(cache, "A", "abcdefgh") == "bcdefgh"
    assert _held(cache, "B", "xyz") == "xyz"


def test_one_namespace_is_a_plain_lru() -> None:
    cache = EmbeddingCache(300, key_share=0.2)

    async def run() -> None:
        for name in "abc":
            await put(cache, name, 25)
        assert cache.lookup(IdKey("public", "m", "a"))  # a is now the most recent
        await put(cache, "d", 25)

    asyncio.run(run())
    assert _held(cache, "public", "abcd") == "acd"
    assert cache.bytes_of("public") == cache.bytes_used == 300


def test_a_namespace_within_its_share_takes_room_from_those_over_theirs() -> None:
    cache = EmbeddingCache(1000, key_share=0.2)

    async def run() -> None:
        for name in "abc":  # B: 300 bytes, over its 200-byte share
            await put(cache, name, 25, ns="B")
        for name in "defghij":  # A: 700 bytes, over its share
            await put(cache, name, 25, ns="A")
        await put(cache, "z", 25, ns="C")  # C is within its share: the oldest over-share goes

    asyncio.run(run())
    assert _held(cache, "B", "abc") == "bc"
    assert _held(cache, "A", "defghij") == "defghij"
    assert _held(cache, "C", "z") == "z"
