"""The feature store: one interface over every place an image's features and saved logits live.

    use case -> FeatureStore -> local byte-LRU (`local.EmbeddingCache`: single-flight, id bindings)
                             -> saved logits (`logits.LogitsCache`)
                             -> Redis tier shared by replicas (`redis_tier.SharedTier`, optional)

A click calls it two or three times: `for_pixels` (an image in the request: embed once, here
or on another replica) or `for_id` (a cached image id), then `load_logits` / `save_logits`
for iterative refinement. How the tiers are reconciled (which binding is authoritative, who
embeds, what is published) is decided here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sam2serve.config import Settings
from sam2serve.errors import NotInCache
from sam2serve.media.decode import LoadedImage
from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Features, Runtime
from sam2serve.store.local import EmbeddingCache, EntryKey, IdKey
from sam2serve.store.logits import LogitsCache, PromptKey

if TYPE_CHECKING:
    from sam2serve.store.codec import Identity
    from sam2serve.store.redis_tier import SharedTier


@dataclass(frozen=True)
class Scope:
    """Whose features, of which model: a client namespace (one per API key) and a loaded
    model (its runtime decides the device features land on and, for the Redis tier, which
    runtime's values may be used)."""

    namespace: str
    spec: ModelSpec
    runtime: Runtime
    embed: Callable[[np.ndarray], Awaitable[Features]]  # RGB (H, W, 3) uint8 -> features

    def entry(self, content_hash: str) -> EntryKey:
        return EntryKey(self.namespace, self.spec.model_id, content_hash)


@dataclass(frozen=True)
class StoredImage:
    """An image's features as the store holds them, and the id they answer to."""

    entry: EntryKey
    image_id: str
    features: Features
    cached: bool  # found (here, in flight, or on another replica) rather than embedded now


class FeatureStore:
    """Features by image content and by image id, and saved logits, per `Scope`.

    `cache_bytes` is the whole local budget; the saved logits take `logits_bytes` of it.
    """

    def __init__(
        self,
        cache_bytes: int,
        *,
        logits_bytes: int,
        logits_entries: int,
        shared: SharedTier | None = None,
    ) -> None:
        self.local = EmbeddingCache(cache_bytes - logits_bytes)
        self.logits = LogitsCache(logits_entries, logits_bytes)
        self.shared = shared  # None: this replica's memory only

    @classmethod
    def from_settings(cls, settings: Settings, shared: SharedTier | None = None) -> FeatureStore:
        """The budgets of `settings` (`SAM2SERVE_CACHE_BYTES` and the logits' share of it)."""
        return cls(
            settings.cache_bytes,
            logits_bytes=settings.logits_budget_bytes,
            logits_entries=settings.logits_cache_entries,
            shared=shared,
        )

    @property
    def max_feature_bytes(self) -> int:
        """The largest features value the store can keep (an id bound to more is useless)."""
        return self.local.max_bytes

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()

    async def probe(self) -> None:
        """Give an open Redis breaker its chance to close (readiness probes call it)."""
        if self.shared is not None:
            await self.shared.probe()

    # -- features ----------------------------------------------------------------------

    async def for_pixels(
        self, scope: Scope, pixels: LoadedImage, image_id: str | None
    ) -> StoredImage:
        """The features of these pixels, bound to `image_id` (default: the content hash).

        Single-flight on two levels: concurrent callers in this process share one
        computation; across replicas the Redis embed lock lets one replica embed while the
        others wait for its value. `scope.embed` runs only when nobody has the features.
        """
        content_hash = pixels.content_hash
        entry = scope.entry(content_hash)
        image_id = image_id or content_hash
        ident = await self._identity(scope)

        async def compute() -> Features:
            if ident is None:
                return await scope.embed(pixels.rgb)
            assert self.shared is not None
            device = scope.runtime.device
            found = await self.shared.wait_or_lock(scope.namespace, ident, content_hash, device)
            if found is not None:
                return found
            try:
                return await scope.embed(pixels.rgb)
            finally:
                await self.shared.unlock(scope.namespace, ident, content_hash)

        features, cached = await self.local.get_or_compute(entry, image_id, compute)
        if ident is not None and features.nbytes <= self.local.max_bytes:
            assert self.shared is not None
            await self.shared.publish(scope.namespace, ident, image_id, content_hash, features)
        return StoredImage(entry, image_id, features, cached)

    async def for_id(self, scope: Scope, image_id: str) -> StoredImage:
        """The features `image_id` is bound to: this replica's, checked against the shared
        binding (authoritative while Redis is up), else fetched from another replica.

        Raises NotInCache when nobody holds them (evicted, expired, or never embedded).
        """
        found = self.local.lookup(IdKey(scope.namespace, scope.spec.model_id, image_id))
        ident = await self._identity(scope)
        if ident is not None:
            found = await self._reconcile(scope, ident, image_id, found)
        if found is None:
            raise NotInCache(
                f"image_id {image_id!r} is not in cache for {scope.spec.model_id}: "
                "send the image (embed_image, or `image` in this request)",
                field="image_id",
            )
        entry, features = found
        return StoredImage(entry, image_id, features, True)

    async def _reconcile(
        self,
        scope: Scope,
        ident: Identity,
        image_id: str,
        local: tuple[EntryKey, Features] | None,
    ) -> tuple[EntryKey, Features] | None:
        """Never answer with pixels the id is no longer bound to; fetch what this replica lacks."""
        assert self.shared is not None
        from sam2serve.store.redis_tier import Binding  # redis-py only where the tier is on

        local_hash = local[0].content_hash if local is not None else None
        bound = await self.shared.binding(scope.namespace, ident, image_id, local_hash)
        if bound is Binding.REFUSED:
            # Redis holds something under this id that this server never writes (junk,
            # another Redis type, another version's format). It is not "unknown": the id
            # may have been re-bound to other pixels elsewhere before the value was damaged,
            # so the local binding may be stale and does not stand either. Only "send the
            # image" is safe; the resend re-binds the id for every replica.
            return None
        if bound is None or bound == local_hash:
            return local  # unknown to Redis, or Redis down: the local answer stands
        features = await self.shared.features(scope.namespace, ident, bound, scope.runtime.device)
        if features is None:
            return None  # rebound elsewhere to pixels nobody can give us: send the image

        async def fetched() -> Features:
            return features

        entry = scope.entry(bound)
        features, _ = await self.local.get_or_compute(entry, image_id, fetched)
        return entry, features

    # -- saved logits (iterative refinement) -------------------------------------------

    async def load_logits(
        self, scope: Scope, image: StoredImage, keys: Sequence[PromptKey]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(mask_input (N, 1, m, m), has_mask (N,)) from the largest earlier prompt set on this
        image that is a strict subset of `keys` (this replica's or any replica's), or None."""
        ident = await self._identity(scope)
        if ident is not None and keys:
            assert self.shared is not None
            content_hash = image.entry.content_hash
            for saved_keys, saved in await self.shared.load_logits(
                scope.namespace, ident, content_hash, side=scope.runtime.low_res_size
            ):
                self.logits.save(image.entry, saved_keys, saved)
        return self.logits.load(image.entry, keys)

    async def save_logits(
        self, scope: Scope, image: StoredImage, keys: Sequence[PromptKey], logits: np.ndarray
    ) -> None:
        """Keep (N, m, m) low-res logits of this prompt set for later refinement."""
        self.logits.save(image.entry, keys, logits)
        ident = await self._identity(scope)
        if ident is not None:
            assert self.shared is not None
            content_hash = image.entry.content_hash
            await self.shared.save_logits(scope.namespace, ident, content_hash, keys, logits)

    async def _identity(self, scope: Scope) -> Identity | None:
        if self.shared is None:
            return None
        return await self.shared.identity(scope.spec, scope.runtime)
