"""Wire models of the video sessions API (requests and responses), shared by HTTP and SDK.

Prompt shapes are the image API's: `points` ([{x, y, positive}]) and a centre-based `box`
({x, y, width, height}) in original-frame pixels, or a COCO RLE `mask` of the whole frame.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sam2serve.wire import Box, ImageInput, Point, RleMask

MaskFormat = Literal["json", "rle"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateSessionRequest(_Wire):
    """JSON body of `POST /sam2/video/sessions` (a multipart `video` upload is the other way)."""

    api_key: str | None = Field(default=None, repr=False)
    url: str | None = Field(default=None, description="https URL of an MP4/WebM/MOV clip")
    frames: list[ImageInput] | None = Field(
        default=None, description="the clip as a list of images (base64 or url), in order"
    )
    sam2_version_id: str | None = Field(default=None, examples=["hiera_tiny"])

    @model_validator(mode="after")
    def _one_source(self) -> CreateSessionRequest:
        if (self.url is None) == (self.frames is None):
            raise ValueError(
                "send exactly one of `url` or `frames` (or upload `video` as multipart)"
            )
        if self.frames is not None and not self.frames:
            raise ValueError("frames: the list is empty; send at least one frame")
        return self


class SessionInfo(BaseModel):
    session_id: str
    model_id: str
    num_frames: int
    fps: float
    width: int
    height: int


class PromptRequest(_Wire):
    """Add or refine one object on one frame (replaces its earlier prompts on that frame)."""

    api_key: str | None = Field(default=None, repr=False)
    frame_index: int = Field(ge=0)
    object_id: int = Field(ge=0, le=2**31 - 1)
    points: list[Point] | None = None
    box: Box | None = None
    mask: RleMask | None = Field(default=None, description="COCO RLE of the whole frame")
    format: MaskFormat = "json"

    @model_validator(mode="after")
    def _some_prompt(self) -> PromptRequest:
        if self.mask is not None and (self.points or self.box is not None):
            raise ValueError("send either `mask`, or `points` and/or `box`, not both")
        if self.mask is None and not self.points and self.box is None:
            raise ValueError("send `points`, a `box`, or a `mask` for the object")
        if self.points is not None and len(self.points) > 64:
            raise ValueError("points: at most 64 points per prompt")
        return self


class PropagateRequest(_Wire):
    api_key: str | None = Field(default=None, repr=False)
    direction: Literal["forward", "backward", "both"] = "forward"
    start_frame: int | None = Field(
        default=None, ge=0, description="default: the earliest prompted frame"
    )
    max_frames: int | None = Field(default=None, ge=1)
    format: MaskFormat = "rle"


class ObjectMask(BaseModel):
    object_id: int
    mask: list[list[list[int]]] | RleMask = Field(
        description="json: polygons of [x, y] points; rle: COCO RLE"
    )
    score: float = Field(description="probability the object is present on the frame")


class FrameResult(BaseModel):
    """One NDJSON line of a propagation, or the answer to a prompt / frame read."""

    frame_index: int
    objects: list[ObjectMask]
