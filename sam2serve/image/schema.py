"""Image clicks' request and response models (`/sam2/embed_image`, `/sam2/segment_image`):
the contract shared by the HTTP routes, the service, the in-process Segmenter and the CLI.
Every shape/type validation happens here, once; limits that depend on configuration are
checked against `Limits`, passed as validation context.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from sam2serve.wire import ApiKeyField, Box, ImageId, ImageInput, Limits, Point, RleMask
from sam2serve.wire import Wire as _Wire

__all__ = ["Box", "ImageInput", "Limits", "Point", "RleMask"]


class Prompt(_Wire):
    box: Box | None = None
    points: list[Point] | None = None

    def token_count(self) -> int:
        return (2 if self.box is not None else 0) + len(self.points or [])


class PromptSet(_Wire):
    prompts: list[Prompt] | None = None


class EmbedRequest(ApiKeyField):
    image: ImageInput
    image_id: ImageId | None = None
    sam2_version_id: str | None = Field(default=None, examples=["hiera_tiny"])


class LocalEmbedRequest(_Wire):
    """An embed of pixels already decoded in this process (the in-process Segmenter): the
    fields of `EmbedRequest` but the image, which travels beside it as pixels."""

    image_id: ImageId | None = None
    sam2_version_id: str | None = None


def _coerce_prompts(value: Any) -> Any:
    """Accept {"prompts": [...]}, a flat list of prompts, or one prompt object."""
    if value is None or isinstance(value, PromptSet):
        return value
    if isinstance(value, list):
        return {"prompts": value}
    if isinstance(value, dict) and "prompts" not in value:
        return {"prompts": [value]} if value else {"prompts": None}
    return value


class SegmentRequest(ApiKeyField):
    image: ImageInput | None = None
    image_id: ImageId | None = None
    sam2_version_id: str | None = Field(default=None, examples=["hiera_tiny"])
    prompts: PromptSet = Field(
        default_factory=PromptSet,
        description='{"prompts": [Prompt, ...]}, a flat list of prompts, or one prompt object',
    )
    multimask_output: bool = True
    mask_input: list[Any] | None = Field(
        default=None,
        description="low-res logits of an earlier prediction: (N, m, m) or (N, 1, m, m)",
    )
    save_logits_to_cache: bool = False
    load_logits_from_cache: bool = False
    format: Literal["json", "rle", "binary"] = "json"
    polygon_holes: bool = Field(
        default=False,
        description=(
            "sam2serve extension: with format=json, also return hole contours; filling all "
            "polygons of a mask together with the even-odd rule rebuilds it exactly"
        ),
    )

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_shape(cls, value: Any) -> Any:
        return _coerce_prompts(value)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> SegmentRequest:
        if self.image is None and self.image_id is None:
            raise ValueError("send `image` (base64 or url), or the `image_id` of an embedded image")
        limits: Limits = (info.context or {}).get("limits", Limits())
        prompts = self.prompts.prompts or []
        if len(prompts) > limits.max_prompts:
            raise ValueError(
                f"prompts: {len(prompts)} prompts is over the limit of {limits.max_prompts}; "
                "split them across requests"
            )
        for i, prompt in enumerate(prompts):
            n_points = len(prompt.points or [])
            if n_points > limits.max_points_per_prompt:
                raise ValueError(
                    f"prompts[{i}].points: {n_points} points is over the limit of "
                    f"{limits.max_points_per_prompt}"
                )
            values = [v for p in prompt.points or [] for v in (p.x, p.y)]
            if prompt.box is not None:
                values += [prompt.box.x, prompt.box.y, prompt.box.width, prompt.box.height]
            if any(abs(v) > limits.max_coordinate for v in values):
                raise ValueError(
                    f"prompts[{i}]: coordinates must be within +-{limits.max_coordinate:g} "
                    "pixels of the image"
                )
        return self

    def prompt_list(self) -> list[Prompt]:
        return list(self.prompts.prompts or [])


# -- responses, shaped as Roboflow's SAM2 server answers ------------------------------


class EmbedResponse(BaseModel):
    image_id: str = Field(description="Use it in segment_image to skip re-sending the image")
    time: float = Field(description="Seconds spent server-side")


class Prediction(BaseModel):
    masks: list[list[list[int]]] | RleMask = Field(
        description="polygon: a list of polygons of [x, y] pixel points; rle: COCO RLE"
    )
    confidence: float
    format: Literal["polygon", "rle"] = "polygon"


class SegmentResponse(BaseModel):
    predictions: list[Prediction]
    time: float = Field(description="Seconds spent server-side")
