"""The LRU under SAM 3's kept values (phrase embeddings, concept outputs): bounded by entries
AND bytes, plus the computations in flight, so that concurrent requests for the same new
value compute it once. Runs on the event loop thread only (no locks)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """At most `max_entries` entries and `max_bytes` bytes (`size_of` each value; either
    bound 0 keeps nothing). Counts hits (`get`, `pending`) and misses (`track`)."""

    def __init__(self, max_entries: int, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size_of = size_of
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        # key -> (value, the bytes charged for it when put)
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        # key -> the task computing it (maybe with others); bounded by the requests in flight
        self._pending: dict[K, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def kept(self) -> list[K]:
        """The kept keys, least recently used first."""
        return list(self._entries)

    def peek(self, key: K) -> V | None:
        """The kept value of `key`, or None, without counting or reordering."""
        found = self._entries.get(key)
        return None if found is None else found[0]

    def get(self, key: K) -> V | None:
        """The kept value of `key` (marked recently used, a hit), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[0]

    def pending(self, key: K) -> asyncio.Task[Any] | None:
        """The task computing `key` now, or None. Joining it counts as a hit: the work runs
        once for all who wait."""
        task = self._pending.get(key)
        if task is not None:
            self.hits += 1
        return task

    def track(self, keys: Iterable[K], task: asyncio.Task[Any]) -> None:
        """Register `task` as the one computing `keys` (each a miss) until it ends."""
        keys = list(keys)
        self.misses += len(keys)
        for key in keys:
            self._pending[key] = task

        def done(finished: asyncio.Task[Any]) -> None:
            for key in keys:
                if self._pending.get(key) is finished:
                    del self._pending[key]
            if not finished.cancelled():
                finished.exception()  # retrieved: every waiter may have left

        task.add_done_callback(done)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def put(self, key: K, value: V) -> None:
        """Keep `value` (replacing `key`'s), evicting least recently used entries over the
        bounds; a value over the whole byte budget is not kept."""
        size = int(self.size_of(value))
        self.pop(key)
        if self.max_entries <= 0 or size > self.max_bytes:
            return
        while self._entries and (
            len(self._entries) >= self.max_entries or self.bytes_used + size > self.max_bytes
        ):
            self.pop(next(iter(self._entries)))
        self._entries[key] = (value, size)
        self.bytes_used += size

    def pop(self, key: K) -> V | None:
        """Forget `key`; its value, or None."""
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.bytes_used -= found[1]
        return found[0]

    def drop_where(self, doomed: Callable[[K], bool]) -> None:
        """Forget every key `doomed` says yes to."""
        for key in [k for k in self._entries if doomed(k)]:
            self.pop(key)

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes_used,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
        }


class LruFront:
    """What a cache built on a `BoundedLRU` (`self._lru`) shows of it: size, bytes, counts."""

    _lru: BoundedLRU[Any, Any]

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes_used(self) -> int:
        return self._lru.bytes_used

    @property
    def hits(self) -> int:
        return self._lru.hits

    @property
    def misses(self) -> int:
        return self._lru.misses
