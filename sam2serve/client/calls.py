"""Request bodies for embed/segment, built once and used by both the HTTP clients and the
in-process Segmenter (so both send exactly the same request)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sam2serve.client.image_encode import ImageLike, encode_image
from sam2serve.client.options import SegmentOptions
from sam2serve.client.results import EmbedResult, SegmentResult, parse_segment

if TYPE_CHECKING:
    from sam2serve.client.mask_calls import MasksCall


@dataclass
class SegmentCall:
    """A segment request body plus what is needed to parse its answer."""

    body: dict[str, Any]
    image_size: tuple[int, int] | None
    prompts: list[dict[str, Any]] | None
    source: Any
    bgr: bool

    def parse(self, answer: dict[str, Any] | bytes) -> SegmentResult:
        return parse_segment(
            answer,
            image_size=self.image_size,
            image_id=self.body.get("image_id"),
            prompts=self.prompts,
            source=self.source,
            source_bgr=self.bgr,
        )


class CallBuilder:
    """Builds bodies and remembers the size of images it embedded (by image_id), so polygon
    answers for `segment_image(image_id=...)` can still be filled into masks."""

    def __init__(self, max_sizes: int = 4096, max_kept_bytes: int = 64 * 1024 * 1024) -> None:
        self._sizes: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._max_sizes = max_sizes
        # encoded images by image_id, to re-send once when a server no longer has the id
        # (evicted, expired, or another replica without the shared tier); LRU by bytes
        self._kept: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._kept_bytes = 0
        self._max_kept_bytes = max_kept_bytes

    def embed_body(
        self,
        image: ImageLike,
        image_id: str | None,
        model: str | None,
        bgr: bool,
        model_field: str = "sam2_version_id",
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        """An embed body and the image's (height, width) when known; `model` goes under
        `model_field` (SAM 2's `sam2_version_id`, SAM 3's `model_id`)."""
        encoded = encode_image(image, bgr=bgr)
        body: dict[str, Any] = {"image": encoded.payload}
        if image_id is not None:
            body["image_id"] = image_id
        if model is not None:
            body[model_field] = model
        return body, encoded.size

    def keep(self, image_id: str, payload: dict[str, Any]) -> None:
        """Remember the image embedded as `image_id` (its request payload)."""
        old = self._kept.pop(image_id, None)
        if old is not None:
            self._kept_bytes -= len(old["value"])
        if len(payload["value"]) > self._max_kept_bytes:
            return
        self._kept[image_id] = payload
        self._kept_bytes += len(payload["value"])
        while self._kept_bytes > self._max_kept_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._kept_bytes -= len(dropped["value"])

    def resend_body(self, call: SegmentCall | MasksCall, status: int) -> dict[str, Any] | None:
        """The body to send once more after a 404 on an id-only segment (segment
        everything, concept segment), when this client still has the image it embedded
        under that id; None otherwise."""
        image_id = call.body.get("image_id")
        if status != 404 or "image" in call.body or image_id is None:
            return None
        payload = self._kept.get(image_id)
        return None if payload is None else {**call.body, "image": payload}

    def embedded(self, result: EmbedResult, size: tuple[int, int] | None) -> EmbedResult:
        if size is not None:
            self._sizes[result.image_id] = size
            self._sizes.move_to_end(result.image_id)
            while len(self._sizes) > self._max_sizes:
                self._sizes.popitem(last=False)
        return result

    def segment_call(
        self, image: ImageLike | None, image_id: str | None, options: SegmentOptions, *, bgr: bool
    ) -> SegmentCall:
        """The request for `options` on an image (encoded here) or an embedded image id."""
        if image is None and image_id is None:
            raise ValueError("give an image, or the image_id of an image embedded before")
        body, prompt_list = options.body()
        size = None
        if image is not None:
            encoded = encode_image(image, bgr=bgr)
            body["image"] = encoded.payload
            size = encoded.size
        if image_id is not None:
            body["image_id"] = image_id
        return SegmentCall(body, size or self.size_of(image_id), prompt_list, image, bgr)

    def size_of(self, image_id: str | None) -> tuple[int, int] | None:
        """(height, width) of an image this builder embedded, if remembered."""
        return None if image_id is None else self._sizes.get(image_id)


def embed_result(answer: dict[str, Any]) -> EmbedResult:
    return EmbedResult(image_id=str(answer["image_id"]), time=float(answer.get("time", 0.0)))
