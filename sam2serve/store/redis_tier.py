"""The shared second cache tier (Redis): any replica can serve a click on an image that
another replica embedded. Enabled by `SAM2SERVE_REDIS_URL`; off by default.

Keys (all under `prefix`, default ``sam2serve:v1``; every key has a TTL, refreshed on use):

    {prefix}:f:{namespace}:{model}:{ckpt16}:{content_hash}   features value (feature_codec)
    {prefix}:id:{namespace}:{model}:{image_id}               -> content_hash (the id binding)
    {prefix}:l:{namespace}:{model}:{ckpt16}:{content_hash}   hash: prompt set -> logits value
    {prefix}:lock:{namespace}:{model}:{content_hash}         embed lock (single-flight)

The id binding in Redis is authoritative while Redis is up: a replica whose local cache
still binds an id to older pixels checks the shared binding on every id-only click, so an
id re-embedded with other pixels elsewhere never answers with the old image.

Faults never reach clients: every operation has a short timeout; a failed one opens a
circuit breaker and the replica serves local-only for `retry_s`, then tries again (one
request or a /readyz probe closes it). Values that are not ours (corrupt, foreign, other
format version, a pickle) are refused by the codec and treated as a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import redis.asyncio as aioredis
import torch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Features, Runtime
from sam2serve.runtime.weights import checkpoint_path, file_sha256
from sam2serve.store import codec
from sam2serve.store.logits import PromptKey

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Skipped(Exception):
    """The breaker is open or the call failed: carry on local-only."""


class SharedTier:
    """Redis-backed features, id bindings and logits, behind a circuit breaker."""

    def __init__(
        self,
        url: str,
        weights_dir: Path,
        *,
        ttl_s: int = 3600,
        timeout_s: float = 0.5,
        retry_s: float = 2.0,
        lock_s: float = 10.0,
        prefix: str = "sam2serve:v1",
    ) -> None:
        self.url = url
        self.weights_dir = Path(weights_dir)
        self.ttl_s = int(ttl_s)
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.lock_s = lock_s
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.counts: Counter[tuple[str, str]] = Counter()
        self._open_until = 0.0  # breaker: skip Redis until this monotonic time
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._identities: dict[tuple[str, str], codec.Identity] = {}

    async def aclose(self) -> None:
        await self._redis.aclose()

    # -- breaker ---------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.down_since is None

    async def _call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        if time.monotonic() < self._open_until:
            self.counts[(op, "skipped")] += 1
            raise _Skipped
        try:
            result = await asyncio.wait_for(fn(), timeout=self.timeout_s * 4)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._trip(op, exc)
            # a timed-out connection may still get the old reply: never reuse one
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect()
            raise _Skipped from exc
        if self.down_since is not None:
            log.warning("shared tier back after %.1fs", time.time() - self.down_since)
            self.down_since = None
        return result

    def _trip(self, op: str, exc: BaseException) -> None:
        self.counts[(op, "error")] += 1
        self._open_until = time.monotonic() + self.retry_s
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if self.down_since is None:
            self.down_since = time.time()
            log.warning("shared tier down, serving local-only: %s", self.last_error)

    async def probe(self) -> bool:
        """Ping Redis if the breaker allows it (for /readyz); True when up."""
        try:
            await self._call("ping", self._redis.ping)
        except _Skipped:
            return False
        return True

    def status(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        return {
            "enabled": True,
            "state": "up" if self.up else "down (serving local-only)",
            "redis": f"{parts.hostname}:{parts.port or 6379}{parts.path or ''}",
            "ttl_s": self.ttl_s,
            "last_error": self.last_error,
            "down_since": self.down_since,
            "counts": {f"{op}.{result}": n for (op, result), n in sorted(self.counts.items())},
        }

    # -- identity --------------------------------------------------------------------

    async def identity(self, spec: ModelSpec, runtime: Runtime) -> codec.Identity:
        """Model id + checkpoint sha256 + producing runtime (hashed once per checkpoint)."""
        path = checkpoint_path(spec, self.weights_dir)
        stat = path.stat()
        producer = f"{type(runtime).__name__}-{getattr(runtime, 'precision', 'fp32')}"
        memo_key = (spec.model_id, f"{stat.st_size}:{stat.st_mtime_ns}:{producer}")
        found = self._identities.get(memo_key)
        if found is None:
            sha = await asyncio.to_thread(file_sha256, path)
            found = codec.Identity(spec.model_id, sha, producer)
            self._identities[memo_key] = found
        return found

    def _key(self, kind: str, namespace: str, ident: codec.Identity, tail: str) -> str:
        if kind == "id":
            return f"{self.prefix}:id:{namespace}:{ident.model_id}:{tail}"
        model = f"{ident.model_id}:{ident.checkpoint_sha256[:16]}:{ident.producer}"
        return f"{self.prefix}:{kind}:{namespace}:{model}:{tail}"

    # -- features and bindings -------------------------------------------------------

    async def binding(
        self, namespace: str, ident: codec.Identity, image_id: str, local_hash: str | None
    ) -> str | None:
        """The content hash `image_id` is bound to (TTL refreshed); None if unknown or down.

        `local_hash`: what this replica's cache binds the id to; its features' TTL is
        refreshed in the same round trip.
        """
        id_key = self._key("id", namespace, ident, image_id)

        async def run() -> list:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.getex(id_key, ex=self.ttl_s)
                if local_hash is not None:
                    pipe.expire(self._key("f", namespace, ident, local_hash), self.ttl_s)
                return await pipe.execute()

        try:
            replies = await self._call("binding", run)
        except _Skipped:
            return None
        bound = replies[0]
        self.counts[("binding", "hit" if bound is not None else "miss")] += 1
        return bound.decode() if bound is not None else None

    async def features(
        self, namespace: str, ident: codec.Identity, content_hash: str, device: torch.device
    ) -> Features | None:
        """Features of this image from Redis, or None (absent, unusable, or Redis down)."""
        key = self._key("f", namespace, ident, content_hash)
        try:
            value = await self._call("features", lambda: self._redis.getex(key, ex=self.ttl_s))
        except _Skipped:
            return None
        if value is None:
            self.counts[("features", "miss")] += 1
            return None
        try:
            found = codec.decode_features(value, ident, content_hash, device)
        except codec.CodecError as exc:
            self.counts[("features", "refused")] += 1
            log.warning("shared tier: refused the value at %s: %s", key, exc)
            return None
        self.counts[("features", "hit")] += 1
        return found

    async def publish(
        self,
        namespace: str,
        ident: codec.Identity,
        image_id: str,
        content_hash: str,
        features: Features | None,
    ) -> None:
        """Bind `image_id` -> `content_hash`; store `features` too when given, or when Redis
        lost them (e.g. after a flush) and this replica still has them."""
        f_key = self._key("f", namespace, ident, content_hash)
        id_key = self._key("id", namespace, ident, image_id)

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(id_key, content_hash, ex=self.ttl_s)
                pipe.expire(f_key, self.ttl_s)
                _, present = await pipe.execute()
            if features is not None and not present:
                value = codec.encode_features(ident, content_hash, features)
                await self._redis.set(f_key, value, ex=self.ttl_s)
                self.counts[("publish", "stored")] += 1

        try:
            await self._call("publish", run)
        except _Skipped:
            return

    async def wait_or_lock(
        self, namespace: str, ident: codec.Identity, content_hash: str, device: torch.device
    ) -> Features | None:
        """Cross-replica single-flight: features another replica has (or finishes within
        `lock_s`), else None once this replica holds the embed lock (or Redis is down)."""
        found = await self.features(namespace, ident, content_hash, device)
        if found is not None:
            return found
        lock_key = self._key("lock", namespace, ident, content_hash)
        deadline = time.monotonic() + self.lock_s
        while time.monotonic() < deadline:
            try:
                got = await self._call(
                    "lock", lambda: self._redis.set(lock_key, b"1", nx=True, ex=int(self.lock_s))
                )
            except _Skipped:
                return None
            if got:
                return None
            await asyncio.sleep(0.05)
            found = await self.features(namespace, ident, content_hash, device)
            if found is not None:
                self.counts[("lock", "waited")] += 1
                return found
        return None  # the holder is slow or gone: compute here

    async def unlock(self, namespace: str, ident: codec.Identity, content_hash: str) -> None:
        lock_key = self._key("lock", namespace, ident, content_hash)
        try:
            await self._call("lock", lambda: self._redis.delete(lock_key))
        except _Skipped:
            return

    # -- logits ----------------------------------------------------------------------

    async def save_logits(
        self,
        namespace: str,
        ident: codec.Identity,
        content_hash: str,
        keys: Sequence[PromptKey],
        logits: np.ndarray,
    ) -> None:
        key = self._key("l", namespace, ident, content_hash)
        value = codec.encode("logits", ident, content_hash, [torch.from_numpy(logits)])

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, _keys_to_text(keys), value)
                pipe.expire(key, self.ttl_s)
                await pipe.execute()

        try:
            await self._call("logits", run)
        except _Skipped:
            return

    async def load_logits(
        self, namespace: str, ident: codec.Identity, content_hash: str
    ) -> Iterator[tuple[list[PromptKey], np.ndarray]]:
        """Every saved (prompt set, (N, m, m) logits) of this image; nothing when down."""
        key = self._key("l", namespace, ident, content_hash)
        try:
            saved = await self._call("logits", lambda: self._redis.hgetall(key))
        except _Skipped:
            return iter(())
        out = []
        for field, value in saved.items():
            try:
                keys = _keys_from_text(field)
                (tensor,), _ = codec.decode(value, "logits", ident, content_hash)
            except (codec.CodecError, ValueError, TypeError) as exc:
                self.counts[("logits", "refused")] += 1
                log.warning("shared tier: refused logits at %s: %s", key, exc)
                continue
            out.append((keys, tensor.numpy()))
        return iter(out)


def _keys_to_text(keys: Sequence[PromptKey]) -> str:
    rows = [
        [list(box) if box is not None else None, sorted([*p, n] for p, n in points)]
        for box, points in keys
    ]
    return json.dumps(rows, separators=(",", ":"))


def _keys_from_text(text: bytes | str) -> list[PromptKey]:
    rows = json.loads(text)
    keys: list[PromptKey] = []
    for box, points in rows:
        box_t = tuple(float(v) for v in box) if box is not None else None
        if box_t is not None and len(box_t) != 4:
            raise ValueError("box needs 4 numbers")
        pts = frozenset(((float(x), float(y), bool(pos)), int(n)) for x, y, pos, n in points)
        keys.append((box_t, pts))  # type: ignore[arg-type]
    return keys
