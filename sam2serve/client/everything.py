"""Segment-everything for the SDK, on SAM 2 or SAM 3: request body and typed result,
shared by the HTTP clients and the in-process Segmenter.

    client.segment_everything("photo.jpg")                          # SAM 2 (the server's)
    client.segment_everything("photo.jpg", model="sam3/sam3_final")  # SAM 3 (the server's)

`model` picks the family: an id that starts with "sam3" (``sam3``, Roboflow's
``sam3/sam3_final``) goes to ``/sam3/segment_everything`` as its ``model_id``; any other id
(or None) to ``/sam2/segment_everything`` as its ``sam2_version_id``. Both answer the same
records, so both give an `EverythingResult`. The SDK always asks for ``format=rle``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam2serve.client.image_encode import ImageLike
from sam2serve.client.mask_calls import MasksCall, paint_masks, rle_fields, with_image
from sam2serve.client.results import MaskPrediction, SegmentResult

EVERYTHING_PATH = "/sam2/segment_everything"
SAM3_EVERYTHING_PATH = "/sam3/segment_everything"
#: Roboflow's id of SAM 3, which every sam2serve server takes as "its SAM 3 model"
SAM3_MODEL = "sam3/sam3_final"

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


def is_sam3_model(model: str | None) -> bool:
    """Whether `model` names a SAM 3 model: SAM 3's ids (ours and Roboflow's) start with
    "sam3", SAM 2's never do (``sam2.1_hiera_*``, ``sam2_hiera_*``, ``hiera_*``). The client
    cannot ask the server's registry before the call, so the name decides the route; a
    wrong SAM 3 id still gets the server's 400 listing the valid ones."""
    return model is not None and model.strip().lower().startswith("sam3")


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
        rgb = self.source_rgb(image, bgr=bgr)
        return paint_masks(rgb, self.masks, range(len(self.predictions)))


class EverythingCall(MasksCall):
    """A segment-everything request (SAM 2's route or SAM 3's) and its answer's parser."""

    def parse(self, answer: dict[str, Any]) -> EverythingResult:
        preds: list[MaskPrediction] = [
            AutoMaskPrediction(
                **rle_fields(p),
                stability_score=float(p["stability_score"]),
                bbox=[float(v) for v in p["bbox"]],
                mask_area=int(p["area"]),
                point=[float(v) for v in p["point"]],
                crop_box=[int(v) for v in p["crop_box"]],
            )
            for p in answer.get("predictions", [])
        ]
        return self.result(EverythingResult, preds, answer)


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
        body["model_id" if is_sam3_model(model) else "sam2_version_id"] = model
    return body


def everything_path(model: str | None) -> str:
    """The route that runs segment everything on `model`'s family."""
    return SAM3_EVERYTHING_PATH if is_sam3_model(model) else EVERYTHING_PATH


def everything_call(
    image: ImageLike | None,
    image_id: str | None,
    model: str | None,
    bgr: bool,
    params: dict[str, Any],
) -> EverythingCall:
    """A segment_everything request (the image encoded here, if given); unknown parameter
    names are a ValueError."""
    body = with_image(everything_body(image_id, model, params), image, image_id, bgr)
    return EverythingCall(everything_path(model), body, image, bgr)
