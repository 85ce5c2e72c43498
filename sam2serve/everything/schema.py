"""Wire models of segment-everything: request parameters and response records.

Parameter names and defaults are those of Meta's `SAM2AutomaticMaskGenerator`; each is
bounded so that one request cannot ask for unbounded work.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sam2serve.wire import ApiKeyField, ImageId, ImageInput, RleMask

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class EverythingParams(BaseModel):
    """The generator's knobs (upstream names and defaults)."""

    model_config = ConfigDict(extra="ignore")

    points_per_side: int = Field(32, ge=1, le=64, description="grid points per image side")
    points_per_batch: int = Field(64, ge=1, le=256, description="prompts per decoder call")
    pred_iou_thresh: Unit = Field(0.8, description="keep masks with predicted IoU above this")
    stability_score_thresh: Unit = Field(0.95, description="keep masks at least this stable")
    stability_score_offset: float = Field(
        1.0, ge=0.0, le=16.0, allow_inf_nan=False, description="logit shift of the stability"
    )
    mask_threshold: float = Field(
        0.0, ge=-16.0, le=16.0, allow_inf_nan=False, description="logit cut-off of a mask"
    )
    box_nms_thresh: Unit = Field(0.7, description="box IoU of duplicates within a crop")
    crop_n_layers: int = Field(0, ge=0, le=2, description="crop layers (layer i: 4**i crops)")
    crop_nms_thresh: Unit = Field(0.7, description="box IoU of duplicates across crops")
    crop_overlap_ratio: float = Field(
        512 / 1500, ge=0.0, le=0.9, allow_inf_nan=False, description="overlap of crops"
    )
    crop_n_points_downscale_factor: int = Field(
        1, ge=1, le=8, description="layer i uses points_per_side / factor**i points per side"
    )
    min_mask_region_area: int = Field(
        0, ge=0, le=100_000, description="fill holes / drop specks up to this area (low-res px)"
    )
    use_m2m: bool = Field(False, description="one refinement step with each mask as input")
    multimask_output: bool = Field(True, description="three masks per grid point")

    @model_validator(mode="after")
    def _grid_per_layer(self) -> EverythingParams:
        last = self.points_per_side // self.crop_n_points_downscale_factor**self.crop_n_layers
        if last < 1:
            raise ValueError(
                f"points_per_side={self.points_per_side} with crop_n_points_downscale_factor="
                f"{self.crop_n_points_downscale_factor} leaves no points in crop layer "
                f"{self.crop_n_layers}: raise points_per_side or lower the factor"
            )
        return self

    def grid_sides(self) -> list[int]:
        """Points per side in each crop layer, as upstream computes them."""
        factor = self.crop_n_points_downscale_factor
        return [int(self.points_per_side / factor**i) for i in range(self.crop_n_layers + 1)]

    def crop_count(self) -> int:
        """Crops over all layers, as upstream lays them out (layer i: 4**i crops)."""
        return sum(4**i for i in range(self.crop_n_layers + 1))

    def total_points(self) -> int:
        """Grid points over all crops (known before the image is read)."""
        return sum(4**i * side * side for i, side in enumerate(self.grid_sides()))

    def generator_kwargs(self) -> dict[str, object]:
        """These parameters as keyword arguments of Meta's SAM2AutomaticMaskGenerator."""
        return self.model_dump()


class EverythingRequest(ApiKeyField, EverythingParams):
    image: ImageInput | None = None
    image_id: ImageId | None = Field(
        default=None, description="a cached image (crops need `image`: they are re-embedded)"
    )
    sam2_version_id: str | None = Field(default=None, examples=["hiera_tiny"])
    format: Literal["json", "rle", "binary"] = "json"
    polygon_holes: bool = Field(
        default=False, description="with format=json, also return hole contours"
    )

    @model_validator(mode="after")
    def _image_given(self) -> EverythingRequest:
        if self.image is None and self.image_id is None:
            raise ValueError("send `image` (base64 or url), or the `image_id` of an embedded image")
        return self

    def params(self) -> EverythingParams:
        return EverythingParams.model_validate(
            self.model_dump(include=set(EverythingParams.model_fields))
        )


class EverythingPrediction(BaseModel):
    masks: list[list[list[int]]] | RleMask = Field(
        description="polygon: a list of polygons of [x, y] pixel points; rle: COCO RLE"
    )
    confidence: float = Field(description="the model's predicted IoU of the mask")
    stability_score: float = Field(description="IoU of the mask at thresholds +- offset")
    bbox: list[float] = Field(description="[x, y, w, h] in pixels, as upstream reports it")
    area: int = Field(description="mask pixels")
    point: list[float] = Field(description="[x, y] grid point that prompted the mask")
    crop_box: list[int] = Field(description="[x, y, w, h] of the crop it came from")
    format: Literal["polygon", "rle"] = "polygon"


class EverythingResponse(BaseModel):
    predictions: list[EverythingPrediction] = Field(description="largest area first")
    time: float = Field(description="Seconds spent server-side")
