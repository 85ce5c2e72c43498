"""SAM 3's concept outputs kept between requests: a repeated prompt on a cached image (the
playground's threshold slider, Label Studio asking again, a client changing
`output_prob_thresh`, `nms_iou_threshold` or `format`) skips the fusion encoder and the
decoder. Thresholds, NMS, caps and format are applied per request after the lookup, so an
answer is the same with or without the cache.

Key: the stored image (namespace, model id, content hash: tenants never share), the
runtime's precision, the phrase (None: boxes only) and the exemplar boxes and labels (exact
bytes). An entry is also tied to the very features object it was computed from: when the
store drops those features (evicted, re-embedded) the entry is dropped at once, and a lookup
with other features (a re-embed under the same key) is a miss. The service drops a model's
entries when its runtime is replaced (as for the phrase cache).

Bytes per entry (`ConceptOutput.nbytes`; the image's features are the store's and are not
charged: an entry never outlives them), real config (200 queries, 72 x 72 tokens, d = 256,
masks 288 x 288):
  fast runtime (segmentation head deferred): fusion memory (5184, 1, 256) fp32 5.3 MB +
  queries, prompt and arrays 0.25 MB + the pixel embedding (1, 256, 288, 288) bf16 42.5 MB
  (charged from the start: it is kept once masks are asked) = 48.0 MB;
  exact runtime: all 200 mask logits (200, 288, 288) fp32 = 66.4 MB.
The default 256 MiB keeps 5 (4 exact). Tiny test config (8 x 8 tokens, masks 32 x 32),
measured: 833,257 bytes (fast), 824,000 (exact).

Runs on the event loop thread only; the features' finalizer hands its drop to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2serve.runtime.sam3_types import ConceptOutput, Sam3Features
from sam2serve.sam3.lru import BoundedLRU, LruFront
from sam2serve.store.keys import EntryKey


@dataclass(frozen=True)
class ConceptKey:
    """What a concept output depends on, besides the model's weights (see `drop_model`)."""

    image: EntryKey  # namespace, model id, content hash
    precision: str  # the runtime's ("fp32", "bf16", ...)
    phrase: str | None  # None: exemplar boxes only
    boxes: bytes  # (N, 4) float32 corners in pixels, exact
    labels: bytes  # (N,) bool

    @classmethod
    def of(
        cls,
        image: EntryKey,
        precision: str,
        phrase: str | None,
        boxes_xyxy: np.ndarray,
        labels: np.ndarray,
    ) -> ConceptKey:
        boxes = np.ascontiguousarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        flags = np.ascontiguousarray(labels, dtype=bool).reshape(-1)
        return cls(image, precision, phrase, boxes.tobytes(), flags.tobytes())


@dataclass(frozen=True)
class _Kept:
    out: ConceptOutput
    source: weakref.ref[Sam3Features]  # the features it was computed from


class ConceptCache(LruFront):
    """LRU of concept outputs: at most `max_entries` entries and `max_bytes` bytes (either
    0 keeps nothing), plus the computations in flight (single-flight)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._lru: BoundedLRU[ConceptKey, _Kept] = BoundedLRU(
            max_entries, max_bytes, lambda kept: kept.out.nbytes
        )

    def kept(self) -> list[ConceptKey]:
        """The kept keys, least recently used first."""
        return self._lru.kept()

    def get(self, key: ConceptKey, features: Sam3Features) -> ConceptOutput | None:
        """The kept output of `key` if it was computed from `features` (these very ones),
        marked recently used; else None (an entry from other features is dropped)."""
        kept = self._lru.peek(key)
        if kept is not None and kept.source() is not features:
            self._lru.pop(key)
            return None
        found = self._lru.get(key)
        return None if found is None else found.out

    def pending(self, key: ConceptKey) -> asyncio.Task[ConceptOutput] | None:
        """The task computing `key` now (a hit: it runs once for all who wait), or None."""
        return self._lru.pending(key)

    def track(self, key: ConceptKey, task: asyncio.Task[ConceptOutput]) -> None:
        """Register `task` as the one computing `key` (a miss) until it ends."""
        self._lru.track([key], task)

    def put(self, key: ConceptKey, features: Sam3Features, out: ConceptOutput) -> None:
        """Keep `out`, computed from `features`, until they leave the store or the bounds
        evict it. Its arrays are made read-only: every later request shares them."""
        for array in (out.boxes_xyxy, out.scores, out.logits):
            array.flags.writeable = False
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._lru.put(key, _Kept(out, weakref.ref(features, self._on_gone(key, loop))))

    def drop_model(self, model_id: str) -> None:
        """Forget every output of `model_id` (its runtime was replaced: other weights, maybe)."""
        self._lru.drop_where(lambda key: key.image.model_id == model_id)

    def describe(self) -> dict[str, int]:
        return {**self._lru.describe(), "computing": self._lru.in_flight}

    def _on_gone(self, key: ConceptKey, loop: asyncio.AbstractEventLoop | None) -> Any:
        """The features' finalizer: drop `key`'s entry if it still comes from them. It may
        run on any thread (wherever the last reference goes), so it is handed to the loop."""

        def gone(ref: weakref.ref[Sam3Features]) -> None:
            if loop is None:  # used without a loop (a script): one thread, drop it here
                self._drop_if_from(key, ref)
                return
            with contextlib.suppress(RuntimeError):  # a closed loop looks nothing up again
                loop.call_soon_threadsafe(self._drop_if_from, key, ref)

        return gone

    def _drop_if_from(self, key: ConceptKey, ref: weakref.ref[Sam3Features]) -> None:
        kept = self._lru.peek(key)
        if kept is not None and kept.source is ref:
            self._lru.pop(key)
