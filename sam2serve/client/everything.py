"""Segment-everything for the SDK: request body and typed result, shared by the HTTP
clients and the in-process Segmenter.

The SDK always asks for ``format=rle`` (exact masks that carry their size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam2serve.client.image_encode import ImageLike, encode_image
from sam2serve.client.results import MaskPrediction, SegmentResult

EVERYTHING_PATH = "/sam2/segment_everything"

#: the generator's parameters the server takes (Meta's names)
PARAMS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "mask_threshold",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "min_mask_region_area",
    "use_m2m",
    "multimask_output",
)


@dataclass(eq=False)
class AutoMaskPrediction(MaskPrediction):
    """One automatic mask: `confidence` is the predicted IoU; bbox [x, y, w, h],
    point [x, y] (the grid point that found it), crop_box [x, y, w, h]."""

    stability_score: float = 0.0
    bbox: list[float] = field(default_factory=list)
    mask_area: int = 0
    point: list[float] = field(default_factory=list)
    crop_box: list[int] = field(default_factory=list)


@dataclass(eq=False)
class EverythingResult(SegmentResult):
    """All masks of an image, largest first; `.masks`, `to_detections()` (each mask its own
    class id, so annotators give each its own colour), `annotate()`, `to_json()`."""

    def annotate(self, image: ImageLike | None = None, *, bgr: bool = False) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: each mask filled in its own colour (smaller masks drawn
        over larger ones) with a white outline."""
        import cv2

        from sam2serve.client.image_encode import load_rgb

        if image is None:
            if self.source is None:
                raise ValueError(
                    "this result was made from an image_id: pass the image to annotate()"
                )
            image, bgr = self.source, self.source_bgr
        out = load_rgb(image, bgr=bgr).astype(np.float32)
        masks = self.masks
        for i, mask in enumerate(masks):
            out[mask] = out[mask] * 0.45 + np.array(distinct_colour(i)) * 0.55
        drawn = np.clip(out, 0, 255).astype(np.uint8)
        for mask in masks:
            contours, _ = cv2.findContours(
                mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(drawn, contours, -1, (255, 255, 255), 1)
        return drawn


def distinct_colour(i: int) -> tuple[int, int, int]:
    """Colour i of an endless sequence of well-separated hues (golden-ratio steps), RGB."""
    import colorsys

    hue = (i * 0.618033988749895) % 1.0
    sat = 0.65 + 0.35 * ((i // 7) % 2)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class EverythingCall:
    body: dict[str, Any]
    source: Any
    bgr: bool

    def parse(self, answer: dict[str, Any]) -> EverythingResult:
        preds = []
        for p in answer.get("predictions", []):
            rle = p["masks"]
            preds.append(
                AutoMaskPrediction(
                    confidence=float(p["confidence"]),
                    format="rle",
                    image_size=(int(rle["size"][0]), int(rle["size"][1])),
                    rle=rle,
                    stability_score=float(p["stability_score"]),
                    bbox=[float(v) for v in p["bbox"]],
                    mask_area=int(p["area"]),
                    point=[float(v) for v in p["point"]],
                    crop_box=[int(v) for v in p["crop_box"]],
                )
            )
        size = preds[0].image_size if preds else None
        time = answer.get("time")
        return EverythingResult(
            preds,
            float(time) if time is not None else None,
            image_id=self.body.get("image_id"),
            image_size=size,
            raw=answer,
            source=self.source,
            source_bgr=self.bgr,
        )


def everything_body(
    image_id: str | None, model: str | None, params: dict[str, Any]
) -> dict[str, Any]:
    """The request body without its image; unknown parameter names are a ValueError."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(
            f"unknown segment_everything parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(PARAMS)}"
        )
    body: dict[str, Any] = {**params, "format": "rle"}
    if image_id is not None:
        body["image_id"] = image_id
    if model is not None:
        body["sam2_version_id"] = model
    return body


def everything_call(
    image: ImageLike | None,
    image_id: str | None,
    model: str | None,
    bgr: bool,
    params: dict[str, Any],
) -> EverythingCall:
    """Body of a segment_everything request; unknown parameter names are a ValueError."""
    body = everything_body(image_id, model, params)
    if image is None and image_id is None:
        raise ValueError("give an image, or the image_id of an image embedded before")
    if image is not None:
        body["image"] = encode_image(image, bgr=bgr).payload
    return EverythingCall(body, image, bgr)
