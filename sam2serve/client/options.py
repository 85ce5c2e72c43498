"""`SegmentOptions`: everything about a segment call except the image, written once.

The sync client, the async client, the in-process Segmenter and the request builder all take
it (or its fields as keyword arguments), so the call is described in one place:

    opts = SegmentOptions(boxes=detections.xyxy, multimask_output=False, format="rle")
    client.segment_image("photo.jpg", options=opts)
    client.segment_image("photo.jpg", boxes=detections.xyxy, multimask_output=False)  # same
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2serve.client.prompt_builder import build_prompts

__all__ = ["FORMATS", "SegmentOptions"]

#: `format` values the SDK accepts; "polygon" is the API's "json".
FORMATS = {"rle": "rle", "json": "json", "polygon": "json", "binary": "binary"}


@dataclass(frozen=True, kw_only=True)
class SegmentOptions:
    """What to segment and how (keyword-only).

    Attributes:
        prompts: the API's prompt JSON (center boxes), for full control: ``{"prompts": [...]}``,
            a list of prompts or one prompt (dicts or the `sam2serve.image.schema.Prompt` model).
        points: ``(x, y)`` / ``(x, y, positive)``, a list of them, or a numpy array ``(N, 2)`` /
            ``(N, 3)``; all points go into ONE prompt.
        boxes: CORNER boxes ``(x1, y1, x2, y2)``: one, a list, or a numpy array ``(N, 4)`` (e.g.
            supervision's ``detections.xyxy``); the first joins the points' prompt, each
            further box is its own prompt. Converted to the API's center form.
        multimask_output: let SAM2 propose 3 masks per prompt and keep the best scored one.
        format: "rle" (exact masks), "json" / "polygon", or "binary" (npz logits).
        model: a sam2_version_id (``hiera_tiny``, ``sam2.1_hiera_large``, ...); None = the
            server's default.
        mask_input: low-res logits ``(N, m, m)`` of an earlier binary answer, to refine.
        save_logits_to_cache / load_logits_from_cache: refine clicks on the server side.
        polygon_holes: with format json, also return hole contours.
    """

    prompts: Any = None
    points: Any = None
    boxes: Any = None
    multimask_output: bool = True
    format: str = "rle"
    model: str | None = None
    mask_input: Any = None
    save_logits_to_cache: bool = False
    load_logits_from_cache: bool = False
    polygon_holes: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    @classmethod
    def of(cls, options: SegmentOptions | None = None, **fields: Any) -> SegmentOptions:
        """`options` with `fields` overriding it (or new options from `fields`); an unknown
        field name raises TypeError."""
        if options is None:
            return cls(**fields)
        return dataclasses.replace(options, **fields) if fields else options

    def body(self) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """The request body without the image fields, and the prompt list it carries."""
        prompt_list = build_prompts(self.prompts, self.points, self.boxes)
        body: dict[str, Any] = {
            "multimask_output": bool(self.multimask_output),
            "format": FORMATS[self.format],
        }
        if prompt_list is not None:
            body["prompts"] = {"prompts": prompt_list}
        if self.model is not None:
            body["sam2_version_id"] = self.model
        if self.mask_input is not None:
            body["mask_input"] = np.asarray(self.mask_input, dtype=np.float32).tolist()
        if self.save_logits_to_cache:
            body["save_logits_to_cache"] = True
        if self.load_logits_from_cache:
            body["load_logits_from_cache"] = True
        if self.polygon_holes:
            body["polygon_holes"] = True
        return body, prompt_list
