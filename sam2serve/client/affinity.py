"""The affinity header the HTTP clients send: `X-Sam2serve-Image-Id`, the image's id, on
every embed / segment / segment-everything request, next to the body's `image_id`.

A load balancer that hashes on it (nginx `hash $http_x_sam2serve_image_id consistent`, the
Ray Serve app's router; docs/scaling.md) then sends an image's embed and all its clicks to
one replica, which holds the features locally. The server checks it against the body's
`image_id` (a mismatch is a 400); the body stays authoritative.

The id is known before the server answers: the caller's `image_id`, or else the id the
server will give the image, the content hash of its decoded pixels (`rgb_content_hash`),
computed here with the server's own decoder. Arrays are hashed as they are (the lossless PNG
sent decodes to the same pixels), files, bytes and PIL images are decoded once. An image the
server fetches from a URL has no header on its embed; its clicks carry the id it returned.
A hash the client cannot compute (not an image, over the pixel cap) means no header: the
server answers as it would without one. Each client remembers the hashes of the last images
it decoded (by a sha256 of the encoded bytes), so sending the same file again costs a hash of
its bytes, not a decode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

from sam2serve.client.image_encode import load_rgb
from sam2serve.wire import IMAGE_ID_HEADER

__all__ = ["IMAGE_ID_HEADER", "RouteIds", "affinity_headers", "content_id", "route_id"]

#: images over this many pixels (the server's default cap, max_image_pixels) are not decoded
#: here: no header (a server with a higher cap still answers; only locality is lost)
MAX_HASH_PIXELS = 40_000_000


def route_id(body: dict[str, Any], source: Any = None, bgr: bool = False) -> str | None:
    """The image id a request is about: the body's `image_id`, else the content hash of its
    base64 image (`source`: what the caller passed, used as it is when it is an array)."""
    image_id = body.get("image_id")
    if isinstance(image_id, str):
        return image_id
    image = body.get("image")
    if not isinstance(image, dict) or image.get("type") != "base64":
        return None
    return content_id(image["value"], source, bgr)


def content_id(value: str, source: Any = None, bgr: bool = False) -> str | None:
    """sha256 content hash of the pixels the server decodes from base64 `value` (as
    `sam2serve.media.decode` computes it), or None when it cannot be computed here."""
    from sam2serve.errors import ServiceError
    from sam2serve.media.decode import decode_image_bytes, rgb_content_hash

    try:
        if isinstance(source, np.ndarray):
            return rgb_content_hash(load_rgb(source, bgr=bgr))
        data = base64.b64decode(value, validate=True)
        return decode_image_bytes(data, max_pixels=MAX_HASH_PIXELS).content_hash
    except (ServiceError, ValueError, TypeError, binascii.Error):
        return None


class RouteIds:
    """`route_id` with a memory of the last `max_entries` encoded images' content hashes."""

    def __init__(self, max_entries: int = 256) -> None:
        self._known: OrderedDict[bytes, str] = OrderedDict()
        self._max_entries = max_entries

    def __call__(self, body: dict[str, Any], source: Any = None, bgr: bool = False) -> str | None:
        image = body.get("image")
        if isinstance(body.get("image_id"), str) or not isinstance(image, dict):
            return route_id(body, source, bgr)
        if image.get("type") != "base64" or isinstance(source, np.ndarray):
            return route_id(body, source, bgr)  # no pixels here, or hashed without a decode
        key = hashlib.sha256(image["value"].encode("ascii", "replace")).digest()
        found = self._known.get(key)
        if found is not None:
            self._known.move_to_end(key)
            return found
        found = route_id(body, source, bgr)
        if found is not None:
            self._known[key] = found
            if len(self._known) > self._max_entries:
                self._known.popitem(last=False)
        return found


def affinity_headers(image_id: str | None) -> dict[str, str] | None:
    """The request headers that carry `image_id` (None: no header)."""
    return None if image_id is None else {IMAGE_ID_HEADER: image_id}
