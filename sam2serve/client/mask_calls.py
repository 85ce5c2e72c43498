"""What the SDK's many-mask calls (segment everything on SAM 2 or SAM 3, concept segment)
share: a request body with its image attached, the answer's RLE masks read into results,
and a drawing of many masks, each in its own colour.

Those calls always ask for ``format=rle`` (exact masks that carry their size), so every
prediction of their answers is read the same way.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from sam2serve.client.image_encode import ImageLike, encode_image
from sam2serve.client.results import MaskPrediction, SegmentResult

R = TypeVar("R", bound=SegmentResult)


def with_image(
    body: dict[str, Any], image: ImageLike | None, image_id: str | None, bgr: bool
) -> dict[str, Any]:
    """`body` with `image` encoded into it (none: the request names an embedded image_id);
    ValueError when neither is given."""
    if image is None and image_id is None:
        raise ValueError("give an image, or the image_id of an image embedded before")
    if image is None:
        return body
    return {**body, "image": encode_image(image, bgr=bgr).payload}


def rle_fields(prediction: dict[str, Any]) -> dict[str, Any]:
    """The `MaskPrediction` fields of one prediction of a format=rle answer."""
    rle = prediction["masks"]
    return {
        "confidence": float(prediction["confidence"]),
        "format": "rle",
        "image_size": (int(rle["size"][0]), int(rle["size"][1])),
        "rle": rle,
    }


@dataclass
class MasksCall:
    """A many-mask request: the route it goes to, its body, and the image it was made from
    (kept on the result, so `annotate()` can draw on it)."""

    path: str
    body: dict[str, Any]
    source: Any
    bgr: bool

    def result(
        self, kind: type[R], preds: list[MaskPrediction], answer: dict[str, Any], **extra: Any
    ) -> R:
        """A `kind` result of `preds` parsed from `answer` (`extra`: the kind's own fields)."""
        time = answer.get("time")
        return kind(
            preds,
            float(time) if time is not None else None,
            image_id=self.body.get("image_id"),
            image_size=preds[0].image_size if preds else None,
            raw=answer,
            source=self.source,
            source_bgr=self.bgr,
            **extra,
        )


def distinct_colour(i: int) -> tuple[int, int, int]:
    """Colour i of an endless sequence of well-separated hues (golden-ratio steps), RGB."""
    hue = (i * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((i // 7) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def paint_masks(rgb: np.ndarray, masks: np.ndarray, colours: Sequence[int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB: each of `masks` ``(N, H, W)`` bool filled in
    `distinct_colour(colours[i])` over `rgb` (later masks over earlier ones), then a white
    outline around each."""
    import cv2

    out = rgb.astype(np.float32)
    for mask, colour in zip(masks, colours, strict=True):
        out[mask] = out[mask] * 0.45 + np.array(distinct_colour(colour)) * 0.55
    drawn = np.clip(out, 0, 255).astype(np.uint8)
    for mask in masks:
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(drawn, contours, -1, (255, 255, 255), 1)
    return drawn
