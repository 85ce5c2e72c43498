"""Embedding cache: byte-bounded LRU with single-flight, and image ids bound to content.

Entries are keyed by (namespace, model_id, content_hash): the same pixels embed once per
client namespace and model. Client-given image ids are aliases bound to the content hash
they were embedded with, so reusing an id for other pixels re-embeds instead of serving
the old image's masks. Namespaces (one per API key) never see each other's entries.

Fair share between namespaces: each namespace has a protected share of the byte budget
(`key_share`, a fraction; `SAM2SERVE_CACHE_KEY_SHARE`). The cache stays one LRU while it has
room; when an entry must be evicted, it is the least recently used entry of the namespace
storing, if that namespace is over its share, else of the namespaces over their share, and
only when none is over its share the least recently used entry of all. So one namespace's
flood of embeds evicts its own images, never another namespace's images that fit in that
namespace's share; a single namespace (no API keys) sees a plain LRU.

All methods run on the event loop thread; `get_or_compute` awaits the computation, and
concurrent callers for the same entry share one computation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from sam2serve.runtime.base import Features
from sam2serve.store.keys import EntryKey, IdKey

__all__ = ["EmbeddingCache", "EntryKey", "IdKey"]


class EmbeddingCache:
    def __init__(self, max_bytes: int, key_share: float = 0.5) -> None:
        """max_bytes: the byte budget; key_share: each namespace's protected fraction of it."""
        self.max_bytes = max_bytes
        self.key_share = key_share
        self.bytes_used = 0
        self._entries: OrderedDict[EntryKey, Features] = OrderedDict()  # all, LRU first
        self._by_namespace: dict[str, OrderedDict[EntryKey, None]] = {}  # each, LRU first
        self._bytes_of: dict[str, int] = {}  # namespace -> bytes it holds
        self._ids: dict[IdKey, EntryKey] = {}
        self._ids_of: dict[EntryKey, set[IdKey]] = {}
        self._inflight: dict[EntryKey, asyncio.Task[Features]] = {}
        self._callers: dict[EntryKey, int] = {}  # callers awaiting each in-flight entry
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        # model id -> bytes of its last stored image (features are fixed-size per model:
        # what /info divides the budget by to say how many images of each model fit)
        self.bytes_per_image: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def share_bytes(self) -> int:
        """Bytes of each namespace's protected share."""
        return int(self.max_bytes * self.key_share)

    def bytes_of(self, namespace: str) -> int:
        """Bytes `namespace`'s entries hold."""
        return self._bytes_of.get(namespace, 0)

    def lookup(self, key: IdKey) -> tuple[EntryKey, Features] | None:
        """The features an image id is bound to, marking them recently used; None if absent."""
        entry = self._ids.get(key)
        if entry is None or entry not in self._entries:
            return None
        self._touch(entry)
        return entry, self._entries[entry]

    async def get_or_compute(
        self,
        entry: EntryKey,
        image_id: str,
        compute: Callable[[], Awaitable[Features]],
    ) -> tuple[Features, bool]:
        """Return (features, was_cached) for `entry`, binding `image_id` to it.

        Only one `compute` runs per entry at a time, in its own task; every caller (the
        first included) awaits that task, so a caller that is cancelled (its client went
        away) never cancels the others' result. When the last caller is gone the task is
        cancelled: work not started yet is dropped, work already running may finish and
        is cached. A failed computation is not cached, its error reaches every caller, and
        `image_id` stays unbound.
        """
        id_key = IdKey(entry.namespace, entry.model_id, image_id)
        cached = self._entries.get(entry)
        if cached is not None:
            self._touch(entry)
            self.hits += 1
            self._bind(id_key, entry)
            return cached, True
        self._unbind(id_key)  # the id now names other pixels: never the old ones again
        features, was_cached = await self._join(entry, compute)
        if entry in self._entries:  # may be absent: over the byte budget, or evicted already
            self._bind(id_key, entry)
        return features, was_cached

    async def _join(
        self, entry: EntryKey, compute: Callable[[], Awaitable[Features]]
    ) -> tuple[Features, bool]:
        """Await the entry's in-flight computation, starting it if there is none."""
        while True:
            task = self._inflight.get(entry)
            was_cached = task is not None
            if task is None:
                self.misses += 1
                task = asyncio.get_running_loop().create_task(self._compute(entry, compute))
                self._inflight[entry] = task
            else:
                self.hits += 1
            self._callers[entry] = self._callers.get(entry, 0) + 1
            try:
                return await asyncio.shield(task), was_cached
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is None or getattr(me, "cancelling", lambda: 1)():  # this caller is cancelled
                    if not task.done() and self._callers.get(entry) == 1:
                        task.cancel()  # nobody else waits: drop the work if not started
                    raise
                # the shared work was dropped by callers that left first: compute again
            finally:
                if self._inflight.get(entry) is task and entry in self._callers:
                    self._callers[entry] -= 1

    async def _compute(
        self, entry: EntryKey, compute: Callable[[], Awaitable[Features]]
    ) -> Features:
        try:
            features = await compute()
            self._store(entry, features)
            return features
        finally:
            del self._inflight[entry]
            self._callers.pop(entry, None)

    def holds(self, entry: EntryKey) -> bool:
        """Whether `entry`'s features are in the cache now."""
        return entry in self._entries

    def images_fit(self) -> dict[str, dict[str, int]]:
        """Per model embedded so far: bytes per image and how many images fit the budget."""
        return {
            model_id: {"bytes_per_image": size, "images": self.max_bytes // max(1, size)}
            for model_id, size in sorted(self.bytes_per_image.items())
        }

    @property
    def ids_bound(self) -> int:
        """How many image ids are bound (bounded by the entries they point to)."""
        return len(self._ids)

    def _unbind(self, id_key: IdKey) -> None:
        old = self._ids.pop(id_key, None)
        if old is not None:
            self._ids_of.get(old, set()).discard(id_key)

    def _bind(self, id_key: IdKey, entry: EntryKey) -> None:
        old = self._ids.get(id_key)
        if old is not None and old != entry:
            self._ids_of.get(old, set()).discard(id_key)
        self._ids[id_key] = entry
        self._ids_of.setdefault(entry, set()).add(id_key)

    def _touch(self, entry: EntryKey) -> None:
        """Mark `entry` most recently used (in the whole cache and in its namespace)."""
        self._entries.move_to_end(entry)
        self._by_namespace[entry.namespace].move_to_end(entry)

    def _store(self, entry: EntryKey, features: Features) -> None:
        size = features.nbytes
        self.bytes_per_image[entry.model_id] = size
        if size > self.max_bytes:
            self._forget_ids(entry)  # cannot keep it: later clicks must re-send the image
            return
        if entry in self._entries:
            self._remove(entry)
        while self._entries and self.bytes_used + size > self.max_bytes:
            victim = self._victim(entry.namespace, size)
            self._remove(victim)
            self.evictions += 1
            self._forget_ids(victim)
        self._entries[entry] = features
        self._by_namespace.setdefault(entry.namespace, OrderedDict())[entry] = None
        self._bytes_of[entry.namespace] = self.bytes_of(entry.namespace) + size
        self.bytes_used += size

    def _victim(self, namespace: str, incoming: int) -> EntryKey:
        """The entry to evict so that `incoming` bytes of `namespace` fit (see the module
        docstring): the namespace's own LRU entry when it would be over its share, else the
        LRU entry of the namespaces over their share, else the LRU entry of all."""
        share = self.share_bytes
        own = self._by_namespace.get(namespace)
        if own and self.bytes_of(namespace) + incoming > share:
            return next(iter(own))
        over = [ns for ns, held in self._bytes_of.items() if held > share and ns != namespace]
        if over:
            heads = {next(iter(self._by_namespace[ns])) for ns in over}
            for key in self._entries:  # the least recently used of those heads
                if key in heads:
                    return key
        return next(iter(self._entries))

    def _remove(self, entry: EntryKey) -> None:
        features = self._entries.pop(entry)
        self.bytes_used -= features.nbytes
        ns = entry.namespace
        mine = self._by_namespace[ns]
        del mine[entry]
        left = self._bytes_of[ns] - features.nbytes
        if mine:
            self._bytes_of[ns] = left
        else:
            del self._by_namespace[ns]
            del self._bytes_of[ns]

    def _forget_ids(self, entry: EntryKey) -> None:
        for id_key in self._ids_of.pop(entry, set()):
            if self._ids.get(id_key) == entry:
                del self._ids[id_key]
