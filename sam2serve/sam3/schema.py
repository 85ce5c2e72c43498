"""SAM 3 request and response models, under Roboflow's field names and defaults
(`/sam3/embed_image`, `/sam3/concept_segment`; `/sam3/visual_segment` takes SAM 2's
segment_image shapes, plus `model_id`), so `inference-sdk`'s `sam3_*` methods work unchanged.

Every shape/type check happens here, once; caps that depend on configuration come in as
`Sam3Limits`, passed as validation context ``{"sam3_limits": Sam3Limits(...)}``.

Boxes are Roboflow's: absolute pixels, either TOP-LEFT ``{x, y, width, height}`` (not SAM 2's
centre box) or corners ``{x0, y0, x1, y1}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from sam2serve.everything.schema import EverythingRequest
from sam2serve.image.schema import SegmentRequest
from sam2serve.wire import ApiKeyField, Coordinate, ImageId, ImageInput, RleMask
from sam2serve.wire import Wire as _Wire

#: the model id Roboflow's clients send for SAM 3
ROBOFLOW_MODEL_ID = "sam3/sam3_final"

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Extent = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclass(frozen=True)
class Sam3Limits:
    """Configured caps (`Sam3Settings`), passed as validation context."""

    max_prompts: int = 16
    max_phrase_chars: int = 200
    max_boxes_per_prompt: int = 32
    max_coordinate: float = 1e6


def _limits(info: ValidationInfo) -> Sam3Limits:
    return (info.context or {}).get("sam3_limits", Sam3Limits())


class BoxXYWH(_Wire):
    """TOP-LEFT box in absolute pixels: (x, y) is the top-left corner (Roboflow's SAM 3 box)."""

    x: Coordinate
    y: Coordinate
    width: Extent
    height: Extent

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.width, self.y + self.height)


class BoxXYXY(_Wire):
    """Corner box in absolute pixels: (x0, y0) top-left, (x1, y1) bottom-right."""

    x0: Coordinate
    y0: Coordinate
    x1: Coordinate
    y1: Coordinate

    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


class Sam3Prompt(_Wire):
    """One concept: a noun phrase, exemplar boxes (1 = like this, 0 = not like this), or both.
    Every matching instance in the image is returned."""

    type: Literal["text", "visual"] | None = Field(
        default=None, description="Optional hint: 'visual' requires at least one box"
    )
    text: str | None = Field(
        default=None,
        examples=["yellow school bus"],
        description="a short noun phrase: every instance of it is returned",
    )
    boxes: list[BoxXYWH | BoxXYXY] | None = Field(
        default=None,
        description=(
            "Exemplar boxes in absolute pixels: top-left {x, y, width, height} or corners "
            "{x0, y0, x1, y1}"
        ),
    )
    box_labels: list[bool | int] | None = Field(
        default=None,
        description="One per box: 1/true positive exemplar, 0/false negative; default all 1",
    )
    output_prob_thresh: Probability | None = Field(
        default=None, description="This prompt's score threshold (default: the request's)"
    )

    @field_validator("box_labels")
    @classmethod
    def _labels_are_binary(cls, labels: list[bool | int] | None) -> list[bool | int] | None:
        for i, label in enumerate(labels or []):
            if not isinstance(label, bool) and label not in (0, 1):
                raise ValueError(
                    f"box_labels[{i}] is {label}: use 1/true (positive exemplar) or "
                    "0/false (negative exemplar)"
                )
        return labels

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Sam3Prompt:
        limits = _limits(info)
        boxes = self.boxes or []
        if self.text is not None and not self.text.strip():
            self.text = None
        if self.text is None and not boxes:
            raise ValueError("give `text` (a noun phrase), exemplar `boxes`, or both")
        if self.type == "visual" and not boxes:
            raise ValueError("a visual prompt needs at least one box in `boxes`")
        if self.text is not None and len(self.text) > limits.max_phrase_chars:
            raise ValueError(
                f"text is {len(self.text)} characters, over the limit of "
                f"{limits.max_phrase_chars}: use a short noun phrase ('red car')"
            )
        if len(boxes) > limits.max_boxes_per_prompt:
            raise ValueError(
                f"boxes: {len(boxes)} boxes is over the limit of {limits.max_boxes_per_prompt} "
                "per prompt; a few exemplars are enough"
            )
        if self.box_labels is not None and len(self.box_labels) != len(boxes):
            raise ValueError(
                f"box_labels has {len(self.box_labels)} labels for {len(boxes)} boxes: give "
                "one per box, or leave it out (all positive)"
            )
        for i, box in enumerate(boxes):
            x0, y0, x1, y1 = box.xyxy()
            if any(abs(v) > limits.max_coordinate for v in (x0, y0, x1, y1)):
                raise ValueError(
                    f"boxes[{i}]: coordinates must be within +-{limits.max_coordinate:g} pixels"
                )
            if x1 < x0 or y1 < y0:
                raise ValueError(f"boxes[{i}]: x1 must be >= x0 and y1 >= y0")
        return self

    def labels(self) -> list[bool]:
        """One bool per box (True: positive exemplar)."""
        boxes = self.boxes or []
        if self.box_labels is None:
            return [True] * len(boxes)
        return [bool(v) for v in self.box_labels]

    def kind(self) -> str:
        """What Roboflow echoes: "visual" when the prompt has boxes, else "text"."""
        return "visual" if self.boxes else "text"


class Sam3EmbedRequest(ApiKeyField):
    image: ImageInput
    image_id: ImageId | None = None
    model_id: str | None = Field(
        default=None,
        examples=[ROBOFLOW_MODEL_ID],
        description="a SAM 3 model id, or Roboflow's sam3/sam3_final (default: the server's)",
    )


class LocalSam3EmbedRequest(_Wire):
    """An embed of pixels already decoded in this process (the in-process Segmenter): the
    fields of `Sam3EmbedRequest` but the image, which travels beside it as pixels."""

    image_id: ImageId | None = None
    model_id: str | None = None


class ConceptSegmentRequest(ApiKeyField):
    """Every instance of each prompt's concept. Send `image`, or the `image_id` of an image
    embedded before (sam2serve extension: Roboflow's server always wants the image)."""

    model_id: str | None = Field(
        default=None,
        examples=[ROBOFLOW_MODEL_ID],
        description="a SAM 3 model id, or Roboflow's sam3/sam3_final (default: the server's)",
    )
    image: ImageInput | None = None
    image_id: ImageId | None = None
    format: Literal["polygon", "rle", "json"] = Field(
        default="polygon", description="polygon (json is the same) | rle (COCO, exact)"
    )
    output_prob_thresh: Probability | None = Field(
        default=0.5, description="Score threshold of every prompt without its own"
    )
    nms_iou_threshold: Probability | None = Field(
        default=None,
        description="Mask IoU above which a lower-scoring instance of ANY prompt is dropped "
        "(cross-prompt NMS); none: off",
    )
    prompts: list[Sam3Prompt] = Field(
        min_length=1,
        examples=[[{"type": "text", "text": "cup"}]],
        description="1 to 16 prompts (SAM2SERVE_SAM3_MAX_PROMPTS)",
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ConceptSegmentRequest:
        if self.image is None and self.image_id is None:
            raise ValueError("send `image` (base64 or url), or the `image_id` of an embedded image")
        limits = _limits(info)
        if len(self.prompts) > limits.max_prompts:
            raise ValueError(
                f"prompts: {len(self.prompts)} prompts is over the limit of "
                f"{limits.max_prompts}; split them across requests on the same image_id"
            )
        return self

    def threshold_of(self, index: int) -> float:
        """Prompt `index`'s score threshold: its own, else the request's (default 0.5)."""
        own = self.prompts[index].output_prob_thresh
        if own is not None:
            return own
        return 0.5 if self.output_prob_thresh is None else self.output_prob_thresh


class VisualSegmentRequest(SegmentRequest):
    """`/sam3/visual_segment`: SAM 2's segment_image body on SAM 3's interactive predictor."""

    model_id: str | None = Field(
        default=None,
        examples=[ROBOFLOW_MODEL_ID],
        description="a SAM 3 model id, or Roboflow's sam3/sam3_final (default: the server's)",
    )


class Sam3EverythingRequest(EverythingRequest):
    """`/sam3/segment_everything`: SAM 2's segment_everything body (Meta's automatic mask
    generator parameters, same bounds) on SAM 3's instance-interactive predictor."""

    model_id: str | None = Field(
        default=None,
        examples=[ROBOFLOW_MODEL_ID],
        description="a SAM 3 model id, or Roboflow's sam3/sam3_final (default: the server's)",
    )


# -- responses -------------------------------------------------------------------------


class Sam3EmbedResponse(BaseModel):
    image_id: str = Field(description="Use it in concept_segment to skip re-sending the image")
    time: float = Field(description="Seconds spent server-side")


class Sam3Prediction(BaseModel):
    masks: list[list[list[int]]] | RleMask = Field(
        description="polygon: a list of polygons of [x, y] pixel points; rle: COCO RLE"
    )
    confidence: float = Field(description="sigmoid(logit) x presence, as Meta's Sam3Processor")
    format: Literal["polygon", "rle"] = "polygon"


class PromptEcho(BaseModel):
    prompt_index: int
    type: str | None = None
    text: str | None = None
    num_boxes: int | None = None


class PromptResult(BaseModel):
    prompt_index: int
    echo: PromptEcho
    predictions: list[Sam3Prediction] = Field(description="Best scores first")
    found: int = Field(
        default=0,
        description="sam2serve extension: instances over the threshold (after NMS), before "
        "the per-prompt and mask-budget caps",
    )
    note: str | None = Field(
        default=None, description="sam2serve extension: why fewer than `found` are answered"
    )


class ConceptSegmentResponse(BaseModel):
    prompt_results: list[PromptResult]
    time: float = Field(description="Seconds spent server-side")


def examples(image: dict[str, str]) -> dict[str, Any]:
    """OpenAPI examples of a concept_segment body on `image` (an ImageInput dict)."""
    return {
        "text": {
            "summary": "every instance of two phrases",
            "value": {
                "image": image,
                "prompts": [{"type": "text", "text": "car"}, {"type": "text", "text": "person"}],
                "output_prob_thresh": 0.5,
            },
        },
        "exemplars": {
            "summary": "exemplar boxes (one positive, one negative) with a phrase",
            "value": {
                "image": image,
                "prompts": [
                    {
                        "type": "visual",
                        "text": "square",
                        "boxes": [
                            {"x": 8, "y": 8, "width": 16, "height": 16},
                            {"x0": 0, "y0": 0, "x1": 6, "y1": 6},
                        ],
                        "box_labels": [1, 0],
                        "output_prob_thresh": 0.4,
                    }
                ],
                "format": "rle",
            },
        },
        "nms": {
            "summary": "two phrases with cross-prompt NMS",
            "value": {
                "image": image,
                "prompts": [{"text": "cup"}, {"text": "mug"}],
                "nms_iou_threshold": 0.5,
            },
        },
    }
