"""The concept-output cache (sam2serve/sam3/concept_cache.py) and the LRU under it: bounds,
order, keys, and entries that die with their image's features."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
import torch

from sam2serve.runtime.sam3_types import ConceptOutput, Sam3Features
from sam2serve.sam3.concept_cache import ConceptCache, ConceptKey
from sam2serve.store.keys import EntryKey

IMAGE = EntryKey("ns", "sam3", "hash-a")
BOX = np.array([[1.0, 2.0, 30.0, 40.0]], dtype=np.float32)
POS = np.array([True])


def _features() -> Sam3Features:
    return Sam3Features(fpn=(torch.zeros(1),), inst=None, orig_hw=(4, 4))


def _out(nbytes: int) -> ConceptOutput:
    """An output of exactly `nbytes` (its mask logits; no queries)."""
    empty = np.zeros(0, dtype=np.float32)
    return ConceptOutput(
        mask_logits=torch.zeros(nbytes // 4),
        boxes_xyxy=empty.reshape(0, 4),
        scores=empty,
        logits=empty.copy(),
        presence=0.5,
    )


def _key(phrase: str | None = "car", **changes: object) -> ConceptKey:
    args: dict[str, object] = {
        "image": IMAGE,
        "precision": "fp32",
        "phrase": phrase,
        "boxes_xyxy": BOX,
        "labels": POS,
    }
    args.update(changes)
    return ConceptKey.of(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entries", "budget", "ops", "kept"),
    [
        # plain LRU by entries: the least recently used goes
        (2, 100, [("put", "a", 40), ("put", "b", 40), ("put", "c", 40)], ["b", "c"]),
        # a hit marks an entry recently used
        (2, 100, [("put", "a", 40), ("put", "b", 40), ("get", "a"), ("put", "c", 40)], ["a", "c"]),
        # by bytes: 90 of 100 needs both others gone
        (4, 100, [("put", "a", 40), ("put", "b", 40), ("put", "c", 88)], ["c"]),
        # one value over the whole budget is not kept, and evicts nothing
        (4, 100, [("put", "a", 40), ("put", "big", 104)], ["a"]),
        # a put under a kept key replaces it (charged once)
        (4, 100, [("put", "a", 40), ("put", "a", 60), ("put", "b", 40)], ["a", "b"]),
        # 0 entries or 0 bytes: nothing is kept
        (0, 100, [("put", "a", 4)], []),
        (4, 0, [("put", "a", 4)], []),
    ],
)
def test_lru_bounds(entries: int, budget: int, ops: list[tuple], kept: list[str]) -> None:
    cache = ConceptCache(entries, budget)
    features = _features()
    sizes = {}
    for op, name, *size in ops:
        if op == "put":
            cache.put(_key(name), features, _out(size[0]))
            sizes[name] = size[0]
        else:
            assert cache.get(_key(name), features) is not None
    assert [k.phrase for k in cache.kept()] == kept
    assert cache.bytes_used == sum(sizes[name] for name in kept)
    assert cache.describe()["entries"] == len(kept)


@pytest.mark.parametrize(
    "other",
    [
        _key("bus"),  # another phrase
        _key(None),  # boxes only
        _key(boxes_xyxy=BOX + np.float32(0.5)),  # other box
        _key(boxes_xyxy=np.zeros((0, 4)), labels=np.zeros(0, bool)),  # no boxes
        _key(labels=np.array([False])),  # negative exemplar
        _key(image=EntryKey("other-key", "sam3", "hash-a")),  # another tenant
        _key(image=EntryKey("ns", "sam3", "hash-b")),  # another image
        _key(image=EntryKey("ns", "sam3-other", "hash-a")),  # another model
        _key(precision="bf16"),  # another runtime
    ],
)
def test_distinct_requests_never_share_an_entry(other: ConceptKey) -> None:
    cache = ConceptCache(8, 1 << 20)
    features = _features()
    cache.put(_key(), features, _out(8))
    assert other != _key()
    assert cache.get(other, features) is None
    assert cache.get(_key(boxes_xyxy=BOX.astype(np.float64)), features) is not None  # same values


def test_an_entry_is_only_for_its_own_features() -> None:
    cache = ConceptCache(8, 1 << 20)
    first, again = _features(), _features()  # the same image embedded twice
    out = _out(8)
    cache.put(_key(), first, out)
    assert cache.get(_key(), first) is out
    assert cache.get(_key(), again) is None and len(cache) == 0  # stale: dropped
    assert out.scores.flags.writeable is False  # shared by later requests: read-only


def test_entries_die_with_their_features_without_a_loop() -> None:
    cache = ConceptCache(8, 1 << 20)
    features = _features()
    cache.put(_key("car"), features, _out(8))
    cache.put(_key("bus"), _features(), _out(8))  # its features are gone at once
    gc.collect()
    assert [k.phrase for k in cache.kept()] == ["car"]
    del features
    gc.collect()
    assert len(cache) == 0 and cache.bytes_used == 0


def test_entries_die_with_their_features_on_the_loop() -> None:
    async def scenario() -> None:
        cache = ConceptCache(8, 1 << 20)
        features = _features()
        cache.put(_key(), features, _out(8))
        del features  # the store evicted them (maybe from a lane thread)
        gc.collect()
        await asyncio.sleep(0)  # the drop was handed to the loop
        assert len(cache) == 0 and cache.bytes_used == 0

    asyncio.run(scenario())


def test_drop_model_and_single_flight() -> None:
    async def scenario() -> None:
        cache = ConceptCache(8, 1 << 20)
        features = _features()
        cache.put(_key(), features, _out(8))
        cache.put(_key(image=EntryKey("ns", "other", "hash-a")), features, _out(8))
        cache.drop_model("sam3")  # its runtime was replaced
        assert [k.image.model_id for k in cache.kept()] == ["other"]

        async def compute() -> ConceptOutput:
            return _out(8)

        task = asyncio.get_running_loop().create_task(compute())
        cache.track(_key("new"), task)
        assert cache.pending(_key("new")) is task and cache.pending(_key("old")) is None
        assert cache.describe()["computing"] == 1 and cache.misses == 1 and cache.hits == 1
        await task
        await asyncio.sleep(0)
        assert cache.pending(_key("new")) is None and cache.describe()["computing"] == 0

    asyncio.run(scenario())
