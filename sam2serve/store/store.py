"""The feature store: one interface over every place an image's features and saved logits live.

    use case -> FeatureStore -> local byte-LRU (`local.EmbeddingCache`: single-flight, id bindings)
                             -> saved logits (`logits.LogitsCache`)
                             -> other replicas (`sharing.Sharing`: `LocalOnly`, or the Redis tier)

A click calls it two or three times: `features` (the request's pixels, embedded once here or
on another replica; or a stored image id), then `load_logits` / `save_logits` for iterative
refinement. How the tiers are reconciled (which binding is authoritative, who embeds, what is
published) is decided here and in `sharing`, nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from sam2serve.config import Settings
from sam2serve.errors import NotInCache
from sam2serve.media.decode import LoadedImage
from sam2serve.runtime.base import Features
from sam2serve.store.keys import EntryKey, IdKey, Scope, StoredImage
from sam2serve.store.local import EmbeddingCache
from sam2serve.store.logits import LogitsCache, PromptKey
from sam2serve.store.sharing import LocalOnly, Sharing

if TYPE_CHECKING:
    from sam2serve.store.redis_tier import SharedTier

__all__ = ["FeatureStore", "Scope", "StoredImage"]


class FeatureStore:
    """Features by image content and by image id, and saved logits, per `Scope`.

    `cache_bytes` is the whole local budget; the saved logits take `logits_bytes` of it;
    `key_share`: the fraction of the features budget each namespace (API key) keeps for
    itself when others flood the cache.
    `sharing`: how other replicas are consulted (default: none, `LocalOnly`).
    """

    def __init__(
        self,
        cache_bytes: int,
        *,
        logits_bytes: int,
        logits_entries: int,
        key_share: float = 0.5,
        sharing: Sharing | None = None,
    ) -> None:
        self.local = EmbeddingCache(cache_bytes - logits_bytes, key_share)
        self.logits = LogitsCache(logits_entries, logits_bytes)
        self.sharing: Sharing = sharing or LocalOnly()

    @classmethod
    def from_settings(cls, settings: Settings, sharing: Sharing | None = None) -> FeatureStore:
        """The budgets of `settings` (`SAM2SERVE_CACHE_BYTES` and the logits' share of it)."""
        return cls(
            settings.cache_bytes,
            logits_bytes=settings.logits_budget_bytes,
            logits_entries=settings.logits_cache_entries,
            key_share=settings.cache_key_share,
            sharing=sharing,
        )

    @property
    def shared(self) -> SharedTier | None:
        """The Redis tier, when replicas share one (its counters feed /info and /metrics)."""
        return getattr(self.sharing, "tier", None)

    @property
    def max_feature_bytes(self) -> int:
        """The largest features value the store can keep (an id bound to more is useless)."""
        return self.local.max_bytes

    async def aclose(self) -> None:
        await self.sharing.aclose()

    async def probe(self) -> None:
        """Give an open Redis breaker its chance to close (readiness probes call it)."""
        await self.sharing.probe()

    # -- features ----------------------------------------------------------------------

    async def features(
        self, scope: Scope, image_id: str | None, pixels: LoadedImage | None = None
    ) -> StoredImage:
        """The features of a request's image.

        With `pixels`: embedded at most once, bound to `image_id` (default: their content
        hash). Single-flight on two levels: concurrent callers in this process share one
        computation; across replicas one embeds while the others wait for its value.

        Without: the features `image_id` is bound to, this replica's checked against the
        other replicas' binding (authoritative while they answer) and fetched from them
        when this replica lacks them. Raises NotInCache when nobody holds them.
        """
        if pixels is not None:
            content_hash = pixels.content_hash
            image_id = image_id or content_hash

            async def embed() -> Features:
                return await scope.embed(pixels.rgb)

            async def compute() -> Features:
                return await self.sharing.embed_once(scope, content_hash, embed)

            entry = EntryKey(scope.namespace, scope.spec.model_id, content_hash)
            features, cached = await self.local.get_or_compute(entry, image_id, compute)
            if features.nbytes <= self.local.max_bytes:  # else its id is gone already
                await self.sharing.publish(scope, image_id, content_hash, features)
            return StoredImage(entry, image_id, features, cached)

        assert image_id is not None  # request validation guarantees one of them
        found = self.local.lookup(IdKey(scope.namespace, scope.spec.model_id, image_id))
        local_hash = found[0].content_hash if found is not None else None
        other = await self.sharing.resolve(scope, image_id, local_hash)
        if other.refused or (other.bound not in (None, local_hash) and other.features is None):
            found = None  # unreadable binding, or rebound to pixels nobody can give us
        elif other.bound not in (None, local_hash) and other.features is not None:
            fetched = other.features

            async def from_replica() -> Features:
                return fetched

            entry = EntryKey(scope.namespace, scope.spec.model_id, other.bound)
            features, _ = await self.local.get_or_compute(entry, image_id, from_replica)
            found = (entry, features)
        if found is None:
            raise NotInCache(
                f"image_id {image_id!r} is not in cache for {scope.spec.model_id}: "
                "send the image (embed_image, or `image` in this request)",
                field="image_id",
            )
        entry, features = found
        return StoredImage(entry, image_id, features, True)

    # -- saved logits (iterative refinement) -------------------------------------------

    async def load_logits(
        self, scope: Scope, image: StoredImage, keys: Sequence[PromptKey]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(mask_input (N, 1, m, m), has_mask (N,)) from the largest earlier prompt set on this
        image that is a strict subset of `keys` (this replica's or any replica's), or None."""
        content_hash = image.entry.content_hash
        for saved_keys, saved in await self.sharing.load_logits(scope, content_hash):
            self.logits.save(image.entry, saved_keys, saved)
        return self.logits.load(image.entry, keys)

    async def save_logits(
        self, scope: Scope, image: StoredImage, keys: Sequence[PromptKey], logits: np.ndarray
    ) -> None:
        """Keep (N, m, m) low-res logits of this prompt set for later refinement."""
        self.logits.save(image.entry, keys, logits)
        await self.sharing.save_logits(scope, image.entry.content_hash, keys, logits)
