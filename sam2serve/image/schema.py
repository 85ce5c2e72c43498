"""The API's request and response models: the contract shared by the HTTP routes, the
service, the in-process Segmenter and the CLI. Every shape/type validation happens here, once.

Field names and shapes follow Roboflow's SAM2 API so its clients work unchanged; unknown
extra fields those clients send (`model_id`, `id`, `usage_billable`, ...) are ignored.
Limits that depend on configuration are checked against `Limits`, passed as validation
context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sam2serve.errors import SchemaError

ImageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
Coordinate = Annotated[float, Field(allow_inf_nan=False)]


@dataclass(frozen=True)
class Limits:
    """Configured caps, passed to `model_validate(..., context={"limits": Limits(...)})`."""

    max_prompts: int = 64
    max_points_per_prompt: int = 64
    max_coordinate: float = 1e6


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageInput(_Wire):
    """`type` is "base64" or "url"; anything else (numpy, pickle) is refused with a 400."""

    type: str = Field(examples=["base64"])
    value: str = Field(description="base64 data (a data: URI prefix is fine) or an https URL")


class Point(_Wire):
    x: Coordinate
    y: Coordinate
    positive: bool = True


class Box(_Wire):
    """CENTER-based box in original-image pixels: (x, y) is the box centre."""

    x: Coordinate
    y: Coordinate
    width: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    height: Annotated[float, Field(ge=0, allow_inf_nan=False)]

    def corners(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) top-left / bottom-right corners."""
        hw, hh = self.width / 2, self.height / 2
        return (self.x - hw, self.y - hh, self.x + hw, self.y + hh)


class Prompt(_Wire):
    box: Box | None = None
    points: list[Point] | None = None

    def token_count(self) -> int:
        return (2 if self.box is not None else 0) + len(self.points or [])


class PromptSet(_Wire):
    prompts: list[Prompt] | None = None


class ApiKeyField(_Wire):
    api_key: str | None = Field(default=None, repr=False)


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


class RleMask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE counts")


class Prediction(BaseModel):
    masks: list[list[list[int]]] | RleMask = Field(
        description="polygon: a list of polygons of [x, y] pixel points; rle: COCO RLE"
    )
    confidence: float
    format: Literal["polygon", "rle"] = "polygon"


class SegmentResponse(BaseModel):
    predictions: list[Prediction]
    time: float = Field(description="Seconds spent server-side")


# -- validation errors -------------------------------------------------------------------


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def schema_error(exc: ValidationError) -> SchemaError:
    """A pydantic error on these models -> a 422 naming the first bad field
    (``prompts.prompts[0].box.width: ...``)."""
    first = exc.errors(include_url=False)[0]
    where = _where(tuple(p for p in first["loc"] if p not in ("function-after",)))
    message = first["msg"].removeprefix("Value error, ")
    return SchemaError(f"{where}: {message}", field=where, errors=len(exc.errors()))
