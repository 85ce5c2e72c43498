"""Phrase embeddings kept between requests: a repeated phrase ("car" on every frame) skips
SAM 3's text encoder. A byte- and entry-bounded LRU keyed by (model id, phrase), plus the
encodings in flight, so that concurrent requests with the same new phrase (a Label Studio
pre-labelling run sends many tasks with the same labels at once) encode it once. Runs on
the event loop thread only (no locks)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from sam2serve.sam3.lru import BoundedLRU, LruFront


class _Sized(Protocol):
    @property
    def nbytes(self) -> int: ...


class TextCache(LruFront):
    """LRU of text embeddings: at most `max_entries` entries and `max_bytes` bytes (either
    0 keeps nothing). Phrases are exact strings: "Car" and "car" are two entries, as the
    tokenizer may tell them apart."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._lru: BoundedLRU[tuple[str, str], Any] = BoundedLRU(
            max_entries, max_bytes, lambda e: int(e.nbytes)
        )

    def get(self, model_id: str, phrase: str) -> Any | None:
        """The kept embedding of `phrase` for `model_id` (marked recently used), or None."""
        return self._lru.get((model_id, phrase))

    def pending(self, model_id: str, phrase: str) -> asyncio.Task[dict[str, Any]] | None:
        """The task encoding `phrase` now (its result maps phrase -> embedding), or None.
        Joining it counts as a hit: the text encoder runs once for all who wait."""
        return self._lru.pending((model_id, phrase))

    def track(self, model_id: str, phrases: list[str], task: asyncio.Task[dict[str, Any]]) -> None:
        """Register `task` as the one encoding `phrases` (each a miss) until it ends."""
        self._lru.track([(model_id, phrase) for phrase in phrases], task)

    def put(self, model_id: str, phrase: str, embedding: _Sized) -> None:
        """Keep `embedding`, evicting the least recently used entries over the bounds."""
        self._lru.put((model_id, phrase), embedding)

    def drop_model(self, model_id: str) -> None:
        """Forget every phrase of `model_id` (its model was reloaded: other weights, maybe)."""
        self._lru.drop_where(lambda key: key[0] == model_id)

    def describe(self) -> dict[str, int]:
        return {**self._lru.describe(), "encoding": self._lru.in_flight}
