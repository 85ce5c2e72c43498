"""Admission of requests that carry an image, decided before their body is read.

Decoding an image and parsing a large JSON body allocate far more than the body itself (a
36 MP PNG of 125 KB decodes to 108 MB of pixels, then features). The embed lane bounds how
many images are embedded at once, but a request only reaches it after parsing and
decoding; so without this step a request that the lane will refuse first spends a second
and hundreds of MB decoding.

Cost model: every request that will decode an image takes one slot, for its whole life;
there are as many slots as the embed lane holds (workers + waiting, times the embed batch
size). Which requests carry an image is known from the route and `Content-Length` alone
(embed_image always; segment_image whose body is over `SMALL_BODY_BYTES`), or, for small
segment bodies, from the parsed JSON before any URL is fetched or image decoded. A request
that finds no free slot is answered 503 + Retry-After at once: its body is read and
discarded (never parsed), so the client sees the answer instead of a reset connection.

Fair sharing: with API keys configured, one key may hold at most `per_key` of the slots
(`SAM2SERVE_EMBED_QUEUE_PER_KEY`), so one key's flood cannot take every slot. The key is
known before the body is read when it comes in the query string or an `Authorization`
header (what the SDK and inference-sdk send); a key in the body is charged once the body is
parsed (still before any image work). Over its share a request gets 429 + Retry-After.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from fastapi import Request

from sam2serve.errors import TooManyRequests, Unavailable

if TYPE_CHECKING:
    from sam2serve.image.service import ImageService

#: segment_image bodies up to this size are parsed before deciding (a click with image_id)
SMALL_BODY_BYTES = 64 * 1024
#: at most this long is spent discarding the body of a refused request
_DRAIN_TIMEOUT_S = 5.0


class ImageAdmission:
    """A counter of image slots; runs on the event loop thread (no locks)."""

    def __init__(self, slots: int, retry_after_s: float, per_key: int = 0) -> None:
        """per_key: slots one namespace may hold at once (0 = no cap of its own)."""
        self.slots = max(1, slots)
        self.retry_after_s = retry_after_s
        self.per_key = per_key
        self.in_use = 0
        self.refused = 0
        self.held_by: dict[str, int] = {}  # namespace -> slots it holds

    def ticket(self, request: Request, max_body_bytes: int) -> AdmissionTicket:
        return AdmissionTicket(self, request, max_body_bytes)


class AdmissionTicket:
    """`async with admission.ticket(request, cap) as t: ... await t.take() ...`: holds at
    most one slot, released on exit."""

    def __init__(self, admission: ImageAdmission, request: Request, max_body_bytes: int) -> None:
        self._admission = admission
        self._request = request
        self._max_body_bytes = max_body_bytes
        self.held = False
        self.namespace: str | None = None  # whose share the slot is charged to

    async def take(self, *, body_read: bool, namespace: str | None = None) -> None:
        """Take a slot or raise 503 (429 when `namespace` is over its share), after
        discarding the unread body when `body_read` is False. Taking twice is a no-op
        (apart from charging `namespace`)."""
        a = self._admission
        if self.held:
            if namespace is not None:
                self.charge(namespace)
            return
        if a.in_use >= a.slots:
            a.refused += 1
            if not body_read:
                await discard_body(self._request, self._max_body_bytes)
            raise Unavailable(
                f"server busy: {a.in_use} images are being decoded or embedded (the embed lane "
                "is full); retry shortly",
                retry_after=a.retry_after_s,
            )
        if namespace is not None and self._over_share(namespace):
            a.refused += 1
            if not body_read:
                await discard_body(self._request, self._max_body_bytes)
            raise self._share_error(namespace)
        a.in_use += 1
        self.held = True
        if namespace is not None:
            self.charge(namespace)

    def charge(self, namespace: str) -> None:
        """Count the held slot against `namespace`'s share (429 and the slot let go when the
        namespace already holds its share). A no-op without a slot or for the same namespace."""
        a = self._admission
        if not self.held or namespace == self.namespace:
            return
        self._uncharge()
        if self._over_share(namespace):
            a.refused += 1
            self._let_go()
            raise self._share_error(namespace)
        a.held_by[namespace] = a.held_by.get(namespace, 0) + 1
        self.namespace = namespace

    def _over_share(self, namespace: str) -> bool:
        a = self._admission
        return a.per_key > 0 and a.held_by.get(namespace, 0) >= a.per_key

    def _share_error(self, namespace: str) -> TooManyRequests:
        a = self._admission
        return TooManyRequests(
            f"this API key already has {a.held_by.get(namespace, 0)} images being decoded or "
            f"embedded, its share of the embed queue ({a.per_key}, "
            "SAM2SERVE_EMBED_QUEUE_PER_KEY); other keys are still served: wait for your "
            "earlier requests, then retry",
            retry_after=a.retry_after_s,
        )

    def _uncharge(self) -> None:
        a = self._admission
        if self.namespace is not None:
            left = a.held_by.get(self.namespace, 0) - 1
            if left > 0:
                a.held_by[self.namespace] = left
            else:
                a.held_by.pop(self.namespace, None)
            self.namespace = None

    def _let_go(self) -> None:
        self._uncharge()
        if self.held:
            self.held = False
            self._admission.in_use -= 1

    async def __aenter__(self) -> AdmissionTicket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._let_go()


def image_admission(service: ImageService) -> ImageAdmission:
    """As many slots as the service's embed lane holds (times its embed batch size); with
    API keys configured, each key may hold `SAM2SERVE_EMBED_QUEUE_PER_KEY` of them."""
    lane = service.embed_lane
    settings = service.settings
    batch = max(1, settings.embed_batch_size)
    per_key = settings.embed_queue_per_key * batch if settings.api_keys else 0
    return ImageAdmission(lane.capacity * batch, lane.retry_after_s, per_key)


def declared_length(request: Request) -> int:
    """The request's Content-Length (0 when absent or not a number)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() and len(value) < 20 else 0


async def discard_body(request: Request, max_bytes: int) -> None:
    """Read and drop the body (up to `max_bytes`), so the 503 reaches the client."""
    if declared_length(request) > max_bytes:
        return  # over the cap anyway: the connection is closed after the answer

    async def drain() -> None:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                return

    try:
        await asyncio.wait_for(drain(), _DRAIN_TIMEOUT_S)
    except Exception:  # a client that stops sending gets the 503 anyway
        return
