"""The request body the in-process Segmenter hands its services, from the SDK's body
(built by the same `sam2serve.client` code as an HTTP client's, so both ask the same).

Images are decoded here and their pixels handed to the service beside the body (no encoding,
no JSON); a URL travels in the body, to be fetched by the service under the server's URL
policy; no image means the body's `image_id` names an embedded one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sam2serve.client.image_encode import ImageLike, is_url
from sam2serve.media.decode import LoadedImage


def service_body(
    body: dict[str, Any],
    image: ImageLike | None,
    image_id: str | None,
    bgr: bool,
    decode: Callable[[ImageLike, bool], LoadedImage],
    check_model: Callable[[], object] | None = None,
) -> tuple[dict[str, Any], LoadedImage | None]:
    """`body` (without its image) as the service takes it, and the pixels decoded here
    (None for a URL or an image_id). `check_model` runs before the decode, so an unknown
    model is reported before any pixel work."""
    if image is None and image_id is None:
        raise ValueError("give an image, or the image_id of an image embedded before")
    if image is None:
        return body, None
    if isinstance(image, str) and is_url(image):
        return {**body, "image": {"type": "url", "value": image}}, None
    if check_model is not None:
        check_model()
    pixels = decode(image, bgr)
    # the pixels are cached under their content hash unless an id was given
    return {**body, "image_id": image_id or pixels.content_hash}, pixels
