"""The shared second cache tier (Redis): any replica can serve a click on an image that
another replica embedded. Enabled by `SAM2SERVE_REDIS_URL`; off by default.

Keys (all under `prefix`, default ``sam2serve:v1``; every key has a TTL, refreshed on use):

    {prefix}:f:{namespace}:{model}:{ckpt16}:{content_hash}   features value (store/codec.py)
    {prefix}:id:{namespace}:{model}:{image_id}               -> content_hash (the id binding)
    {prefix}:l:{namespace}:{model}:{ckpt16}:{content_hash}   hash: prompt set -> logits value
    {prefix}:lock:{namespace}:{model}:{ckpt16}:{content_hash}  embed lock (single-flight)

The id binding in Redis is authoritative while Redis is up: a replica whose local cache
still binds an id to older pixels checks the shared binding on every id-only click, so an
id re-embedded with other pixels elsewhere never answers with the old image.

Faults never reach clients: every operation has a short timeout; a failed one opens a
circuit breaker and the replica serves local-only for `retry_s`, then tries again (one
request or a /readyz probe closes it).

Everything read back is validated; what this server would not have written is refused,
counted as ``(op, "refused")`` (op: features, binding, logits, lock), logged without the
value and treated as a miss, and it does NOT open the breaker (Redis answered; only
connection errors and timeouts do):

- features and logits values: the codec's typed header (format version, kind, model id,
  checkpoint sha256, producing runtime, content hash, shapes, CRC32), so a corrupt,
  truncated, foreign-model, other-version or pickled value is refused; logits must also have
  one (m, m) plane per prompt of their field's prompt set. A refused features value is
  overwritten by this replica's next publish of that image.
- bindings: exactly a content hash as `image_decode.rgb_content_hash` writes it (64
  lowercase hex). A binding that is present but refused is NOT "unknown": the local
  binding does not stand either (see `sharing.Resolved`); the click gets 404
  "send the image", and the resend re-binds the id for every replica.
- locks: ``sam2serve-lock:v1:`` + a random token per holder, with a TTL of at most
  `lock_s`. Anything else under a lock key (no TTL, a longer TTL, another value, another
  Redis type) is stale: it is taken over at once instead of waited for. Unlock deletes the
  lock only while it still holds this holder's token.
- any key of the wrong Redis type (a WRONGTYPE reply) counts as refused; the logits hash is
  replaced by the next save, a features or binding key by the next publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import redis.asyncio as aioredis
import torch
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from sam2serve.runtime.base import Features
from sam2serve.store import codec
from sam2serve.store.logits import PromptKey
from sam2serve.store.redis_scripts import (
    CONTENT_HASH,
    LOCK_PREFIX,
    LOCK_SCRIPT,
    PER_KEY_ERRORS,
    SAVE_LOGITS_SCRIPT,
    UNLOCK_SCRIPT,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Skipped(Exception):
    """The breaker is open or the call failed: carry on local-only."""


class _Refused(Exception):
    """Redis answered, but the key holds something this server never writes (another Redis
    type): counted as refused, a miss; the breaker stays closed."""


class Binding(enum.Enum):
    """`SharedTier.binding()`'s answer when Redis holds something under the id that is not a
    binding this server writes."""

    REFUSED = "refused"


def _per_key(exc: object) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith(PER_KEY_ERRORS)


class SharedTier:
    """Redis-backed features, id bindings and logits, behind a circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int = 3600,
        timeout_s: float = 0.5,
        retry_s: float = 2.0,
        lock_s: float = 10.0,
        prefix: str = "sam2serve:v1",
    ) -> None:
        self.url = url
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
        self._lock_script = self._redis.register_script(LOCK_SCRIPT)
        self._unlock_script = self._redis.register_script(UNLOCK_SCRIPT)
        self._save_logits_script = self._redis.register_script(SAVE_LOGITS_SCRIPT)
        self._lock_tokens: dict[str, bytes] = {}  # lock key -> this replica's value in it
        self._refused_features: set[str] = set()  # keys to overwrite on the next publish

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
        except ResponseError as exc:
            if not _per_key(exc):
                self._trip(op, exc)
                raise _Skipped from exc
            self._refuse(op, "holds another Redis type", exc)
            raise _Refused from exc
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

    def _refuse(self, op: str, what: str, exc: BaseException | None = None) -> None:
        """Count and log a refused read (never the value itself: it is untrusted)."""
        self.counts[(op, "refused")] += 1
        detail = f": {type(exc).__name__}: {str(exc)[:120]}" if exc is not None else ""
        log.warning("shared tier: refused %s (%s)%s", op, what, detail)

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

    # -- keys ------------------------------------------------------------------------

    def _key(self, kind: str, namespace: str, ident: codec.Identity, tail: str) -> str:
        if kind == "id":
            return f"{self.prefix}:id:{namespace}:{ident.model_id}:{tail}"
        model = f"{ident.model_id}:{ident.checkpoint_sha256[:16]}:{ident.producer}"
        return f"{self.prefix}:{kind}:{namespace}:{model}:{tail}"

    # -- features and bindings -------------------------------------------------------

    async def binding(
        self, namespace: str, ident: codec.Identity, image_id: str, local_hash: str | None
    ) -> str | Binding | None:
        """The content hash `image_id` is bound to (TTL refreshed); None if unknown or down;
        `Binding.REFUSED` if Redis holds something there that is not a binding of ours.

        `local_hash`: what this replica's cache binds the id to; its features' TTL is
        refreshed in the same round trip.
        """
        id_key = self._key("id", namespace, ident, image_id)

        async def run() -> list:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.getex(id_key, ex=self.ttl_s)
                if local_hash is not None:
                    pipe.expire(self._key("f", namespace, ident, local_hash), self.ttl_s)
                replies = await pipe.execute(raise_on_error=False)
            for reply in replies:  # (per-key errors are looked at below)
                if isinstance(reply, Exception) and not _per_key(reply):
                    raise reply
            return replies

        try:
            replies = await self._call("binding", run)
        except _Skipped:
            return None
        bound = replies[0]
        if bound is None:
            self.counts[("binding", "miss")] += 1
            return None
        if _per_key(bound):
            self._refuse("binding", f"{id_key} holds another Redis type")
            return Binding.REFUSED
        if not isinstance(bound, bytes) or not CONTENT_HASH.fullmatch(bound):
            self._refuse("binding", f"{id_key} holds no content hash")
            return Binding.REFUSED
        self.counts[("binding", "hit")] += 1
        return bound.decode()

    async def get_features(
        self, namespace: str, ident: codec.Identity, content_hash: str, device: torch.device
    ) -> Features | None:
        """Features of this image from Redis, or None (absent, unusable, or Redis down)."""
        key = self._key("f", namespace, ident, content_hash)
        try:
            value = await self._call("features", lambda: self._redis.getex(key, ex=self.ttl_s))
        except _Skipped:
            return None
        except _Refused:
            self._note_refused(key)
            return None
        if value is None:
            self.counts[("features", "miss")] += 1
            return None
        try:
            found = codec.decode_features(value, ident, content_hash, device)
        except Exception as exc:  # untrusted bytes: any failure to decode is a refusal
            self._refuse("features", f"the value at {key}", exc)
            self._note_refused(key)
            return None
        self.counts[("features", "hit")] += 1
        return found

    def _note_refused(self, key: str) -> None:
        if len(self._refused_features) >= 4096:
            self._refused_features.clear()
        self._refused_features.add(key)

    async def publish(
        self,
        namespace: str,
        ident: codec.Identity,
        image_id: str,
        content_hash: str,
        features: Features | None,
    ) -> None:
        """Bind `image_id` -> `content_hash`; store `features` too when given and Redis lost
        them (e.g. after a flush) or holds a value this replica refused."""
        f_key = self._key("f", namespace, ident, content_hash)
        id_key = self._key("id", namespace, ident, image_id)

        async def run() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(id_key, content_hash, ex=self.ttl_s)
                pipe.expire(f_key, self.ttl_s)
                _, present = await pipe.execute()
            if features is not None and (not present or f_key in self._refused_features):
                value = codec.encode_features(ident, content_hash, features)
                await self._redis.set(f_key, value, ex=self.ttl_s)
                self._refused_features.discard(f_key)
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
        found = await self.get_features(namespace, ident, content_hash, device)
        if found is not None:
            return found
        lock_key = self._key("lock", namespace, ident, content_hash)
        value = LOCK_PREFIX + secrets.token_hex(16).encode()
        lock_ms = max(1, int(self.lock_s * 1000))
        deadline = time.monotonic() + self.lock_s
        while time.monotonic() < deadline:
            try:
                got = await self._call(
                    "lock",
                    lambda: self._lock_script(keys=[lock_key], args=[value, lock_ms, LOCK_PREFIX]),
                )
            except (_Skipped, _Refused):
                return None
            if got:
                self._lock_tokens[lock_key] = value
                if got == 2:
                    self._refuse("lock", f"took over a stale or foreign lock at {lock_key}")
                return None
            await asyncio.sleep(0.05)
            found = await self.get_features(namespace, ident, content_hash, device)
            if found is not None:
                self.counts[("lock", "waited")] += 1
                return found
        return None  # the holder is slow or gone: compute here

    async def unlock(self, namespace: str, ident: codec.Identity, content_hash: str) -> None:
        """Release this replica's embed lock, if it still holds it (never another's)."""
        lock_key = self._key("lock", namespace, ident, content_hash)
        value = self._lock_tokens.pop(lock_key, None)
        if value is None:
            return  # never taken here (Redis was down)
        try:
            await self._call("lock", lambda: self._unlock_script(keys=[lock_key], args=[value]))
        except (_Skipped, _Refused):
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

        try:
            replaced = await self._call(
                "logits",
                lambda: self._save_logits_script(
                    keys=[key], args=[codec.prompt_keys_to_text(keys), value, self.ttl_s]
                ),
            )
        except (_Skipped, _Refused):
            return
        if replaced:
            self._refuse("logits", f"replaced {key}: it held another Redis type")

    async def load_logits(
        self,
        namespace: str,
        ident: codec.Identity,
        content_hash: str,
        *,
        side: int | None = None,
    ) -> Iterator[tuple[list[PromptKey], np.ndarray]]:
        """Every saved (prompt set, (N, m, m) logits) of this image (m = `side` if given);
        nothing when down."""
        key = self._key("l", namespace, ident, content_hash)
        try:
            saved = await self._call("logits", lambda: self._redis.hgetall(key))
        except (_Skipped, _Refused):
            return iter(())
        out = []
        for field, value in saved.items():
            try:
                keys = codec.prompt_keys_from_text(field)
                (tensor,), _ = codec.decode(value, "logits", ident, content_hash)
                n, h, w = tensor.shape
                if n != len(keys) or h != w or (side is not None and h != side):
                    raise codec.CodecError(f"logits of shape {tuple(tensor.shape)}")
            except Exception as exc:  # untrusted bytes: any failure to decode is a refusal
                self._refuse("logits", f"a field of {key}", exc)
                continue
            out.append((keys, tensor.numpy()))
        return iter(out)
