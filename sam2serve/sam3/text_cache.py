"""Phrase embeddings kept between requests: a repeated phrase ("car" on every frame) skips
SAM 3's text encoder. A byte- and entry-bounded LRU keyed by (model id, phrase), plus the
encodings in flight, so that concurrent requests with the same new phrase (a Label Studio
pre-labelling run sends many tasks with the same labels at once) encode it once. Runs on
the event loop thread only (no locks)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Protocol


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


class TextCache:
    """LRU of text embeddings: at most `max_entries` entries and `max_bytes` bytes (either
    0 keeps nothing). Phrases are exact strings: "Car" and "car" are two entries, as the
    tokenizer may tell them apart."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, str], Any] = OrderedDict()
        # phrase -> the task encoding it (with others); bounded by the requests in flight
        self._pending: dict[tuple[str, str], asyncio.Task[dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model_id: str, phrase: str) -> Any | None:
        """The kept embedding of `phrase` for `model_id` (marked recently used), or None."""
        key = (model_id, phrase)
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def pending(self, model_id: str, phrase: str) -> asyncio.Task[dict[str, Any]] | None:
        """The task encoding `phrase` now (its result maps phrase -> embedding), or None.
        Joining it counts as a hit: the text encoder runs once for all who wait."""
        task = self._pending.get((model_id, phrase))
        if task is not None:
            self.hits += 1
        return task

    def track(self, model_id: str, phrases: list[str], task: asyncio.Task[dict[str, Any]]) -> None:
        """Register `task` as the one encoding `phrases` (each a miss) until it ends."""
        keys = [(model_id, phrase) for phrase in phrases]
        self.misses += len(keys)
        for key in keys:
            self._pending[key] = task

        def done(finished: asyncio.Task[dict[str, Any]]) -> None:
            for key in keys:
                if self._pending.get(key) is finished:
                    del self._pending[key]
            if not finished.cancelled():
                finished.exception()  # retrieved: every waiter may have left

        task.add_done_callback(done)

    def put(self, model_id: str, phrase: str, embedding: _Sized) -> None:
        """Keep `embedding`, evicting the least recently used entries over the bounds."""
        size = int(embedding.nbytes)
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        key = (model_id, phrase)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes_used -= int(old.nbytes)
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes_used + size > self.max_bytes
        ):
            _, dropped = self._entries.popitem(last=False)
            self.bytes_used -= int(dropped.nbytes)
        self._entries[key] = embedding
        self.bytes_used += size

    def drop_model(self, model_id: str) -> None:
        """Forget every phrase of `model_id` (its model was reloaded: other weights, maybe)."""
        for key in [k for k in self._entries if k[0] == model_id]:
            self.bytes_used -= int(self._entries.pop(key).nbytes)

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes_used,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "encoding": len(self._pending),
        }
