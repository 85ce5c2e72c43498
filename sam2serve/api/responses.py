"""Wire models for responses, shaped as Roboflow's SAM2 server answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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


class ErrorResponse(BaseModel):
    message: str
    field: str | None = None
    extra: dict[str, Any] | None = None
