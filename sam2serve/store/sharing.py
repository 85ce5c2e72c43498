"""How replicas share features: the seam between the feature store and the Redis tier.

`FeatureStore` asks a `Sharing` five things per request at most (who else holds this id,
embed once across replicas, publish, load and save logits). `LocalOnly` answers them for a
single process (nobody else holds anything); `RedisSharing` answers them from the Redis tier
(`redis_tier.SharedTier`), whose faults and refusals are already misses by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sam2serve.runtime.base import Features
from sam2serve.runtime.weights import checkpoint_path, file_sha256
from sam2serve.store.codec import Identity
from sam2serve.store.keys import Scope
from sam2serve.store.logits import PromptKey

if TYPE_CHECKING:
    from sam2serve.store.redis_tier import SharedTier


@dataclass(frozen=True)
class Resolved:
    """What the other replicas say an image id names.

    bound: the content hash the id is bound to; None when they know nothing (or cannot be
        asked): this replica's own binding stands.
    features: those pixels' features, when they differ from this replica's and could be
        fetched (None: nobody can give them; send the image).
    refused: something unreadable is stored under the id: no binding stands, not even ours
        (the id may have been re-bound elsewhere before the value was damaged).
    """

    bound: str | None = None
    features: Features | None = None
    refused: bool = False


class Sharing(Protocol):
    async def resolve(self, scope: Scope, image_id: str, local_hash: str | None) -> Resolved: ...

    async def embed_once(
        self, scope: Scope, content_hash: str, embed: Callable[[], Awaitable[Features]]
    ) -> Features: ...

    async def publish(
        self, scope: Scope, image_id: str, content_hash: str, features: Features
    ) -> None: ...

    async def load_logits(
        self, scope: Scope, content_hash: str
    ) -> list[tuple[list[PromptKey], np.ndarray]]: ...

    async def save_logits(
        self, scope: Scope, content_hash: str, keys: Sequence[PromptKey], logits: np.ndarray
    ) -> None: ...

    async def probe(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class LocalOnly:
    """One process, no other replicas: every question has the trivial answer."""

    async def resolve(self, scope: Scope, image_id: str, local_hash: str | None) -> Resolved:
        return Resolved()

    async def embed_once(
        self, scope: Scope, content_hash: str, embed: Callable[[], Awaitable[Features]]
    ) -> Features:
        return await embed()

    async def publish(
        self, scope: Scope, image_id: str, content_hash: str, features: Features
    ) -> None:
        return None

    async def load_logits(
        self, scope: Scope, content_hash: str
    ) -> list[tuple[list[PromptKey], np.ndarray]]:
        return []

    async def save_logits(
        self, scope: Scope, content_hash: str, keys: Sequence[PromptKey], logits: np.ndarray
    ) -> None:
        return None

    async def probe(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"enabled": False}

    async def aclose(self) -> None:
        return None


class RedisSharing:
    """The Redis tier as the store's `Sharing`: values are keyed by an `Identity` (model,
    exact checkpoint, producing runtime), so replicas never use each other's features unless
    they would compute the same ones."""

    def __init__(self, tier: SharedTier, weights_dir: Path) -> None:
        self.tier = tier
        self.weights_dir = Path(weights_dir)
        self._identities: dict[tuple[str, str], Identity] = {}

    async def identity(self, scope: Scope) -> Identity:
        """Model id + checkpoint sha256 + producing runtime (hashed once per checkpoint)."""
        spec, runtime = scope.spec, scope.runtime
        path = checkpoint_path(spec, self.weights_dir)
        stat = path.stat()
        producer = f"{type(runtime).__name__}-{getattr(runtime, 'precision', 'fp32')}"
        memo_key = (spec.model_id, f"{stat.st_size}:{stat.st_mtime_ns}:{producer}")
        found = self._identities.get(memo_key)
        if found is None:
            sha = await asyncio.to_thread(file_sha256, path)
            found = Identity(spec.model_id, sha, producer)
            self._identities[memo_key] = found
        return found

    async def resolve(self, scope: Scope, image_id: str, local_hash: str | None) -> Resolved:
        from sam2serve.store.redis_tier import Binding  # redis-py only where the tier is on

        ident = await self.identity(scope)
        bound = await self.tier.binding(scope.namespace, ident, image_id, local_hash)
        if bound is Binding.REFUSED:
            return Resolved(refused=True)
        if bound is None or bound == local_hash:
            return Resolved(bound=bound)  # unknown, Redis down, or the same pixels as ours
        device = scope.runtime.device
        return Resolved(bound, await self.tier.get_features(scope.namespace, ident, bound, device))

    async def embed_once(
        self, scope: Scope, content_hash: str, embed: Callable[[], Awaitable[Features]]
    ) -> Features:
        """Another replica's features for these pixels (or the ones it finishes within the
        lock time), else `embed()` here while holding the embed lock."""
        ident = await self.identity(scope)
        device = scope.runtime.device
        found = await self.tier.wait_or_lock(scope.namespace, ident, content_hash, device)
        if found is not None:
            return found
        try:
            return await embed()
        finally:
            await self.tier.unlock(scope.namespace, ident, content_hash)

    async def publish(
        self, scope: Scope, image_id: str, content_hash: str, features: Features
    ) -> None:
        ident = await self.identity(scope)
        await self.tier.publish(scope.namespace, ident, image_id, content_hash, features)

    async def load_logits(
        self, scope: Scope, content_hash: str
    ) -> list[tuple[list[PromptKey], np.ndarray]]:
        ident = await self.identity(scope)
        side = scope.runtime.low_res_size
        return list(await self.tier.load_logits(scope.namespace, ident, content_hash, side=side))

    async def save_logits(
        self, scope: Scope, content_hash: str, keys: Sequence[PromptKey], logits: np.ndarray
    ) -> None:
        ident = await self.identity(scope)
        await self.tier.save_logits(scope.namespace, ident, content_hash, keys, logits)

    async def probe(self) -> None:
        await self.tier.probe()

    def status(self) -> dict[str, Any]:
        return self.tier.status()

    async def aclose(self) -> None:
        await self.tier.aclose()
