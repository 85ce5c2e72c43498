"""Request bodies for embed/segment, built once and used by both the HTTP clients and the
in-process Segmenter (so both send exactly the same request)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2serve.client.images import ImageLike, encode_image
from sam2serve.client.prompts import build_prompts
from sam2serve.client.results import EmbedResult, SegmentResult, parse_segment

#: `format` values the SDK accepts; "polygon" is the API's "json".
FORMATS = {"rle": "rle", "json": "json", "polygon": "json", "binary": "binary"}


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
        self, image: ImageLike, image_id: str | None, model: str | None, bgr: bool
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        encoded = encode_image(image, bgr=bgr)
        body: dict[str, Any] = {"image": encoded.payload}
        if image_id is not None:
            body["image_id"] = image_id
        if model is not None:
            body["sam2_version_id"] = model
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

    def resend_body(self, call: SegmentCall, status: int) -> dict[str, Any] | None:
        """The body to send once more after a 404 on an id-only segment, when this client
        still has the image it embedded under that id; None otherwise."""
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
        self,
        image: ImageLike | None,
        image_id: str | None,
        prompts: Any,
        points: Any,
        boxes: Any,
        multimask_output: bool,
        format: str,
        model: str | None,
        bgr: bool,
        mask_input: Any,
        save_logits_to_cache: bool,
        load_logits_from_cache: bool,
        polygon_holes: bool,
    ) -> SegmentCall:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if image is None and image_id is None:
            raise ValueError("give an image, or the image_id of an image embedded before")
        prompt_list = build_prompts(prompts, points, boxes)
        body: dict[str, Any] = {"multimask_output": bool(multimask_output)}
        body["format"] = FORMATS[format]
        size = None
        if image is not None:
            encoded = encode_image(image, bgr=bgr)
            body["image"] = encoded.payload
            size = encoded.size
        if image_id is not None:
            body["image_id"] = image_id
            size = size or self._sizes.get(image_id)
        if prompt_list is not None:
            body["prompts"] = {"prompts": prompt_list}
        if model is not None:
            body["sam2_version_id"] = model
        if mask_input is not None:
            body["mask_input"] = np.asarray(mask_input, dtype=np.float32).tolist()
        if save_logits_to_cache:
            body["save_logits_to_cache"] = True
        if load_logits_from_cache:
            body["load_logits_from_cache"] = True
        if polygon_holes:
            body["polygon_holes"] = True
        return SegmentCall(body, size, prompt_list, image, bgr)


def embed_result(answer: dict[str, Any]) -> EmbedResult:
    return EmbedResult(image_id=str(answer["image_id"]), time=float(answer.get("time", 0.0)))
