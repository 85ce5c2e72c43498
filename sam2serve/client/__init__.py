"""sam2serve's Python SDK: HTTP clients for any server speaking the SAM2 API.

    from sam2serve.client import Sam2Client

    result = Sam2Client("http://127.0.0.1:9001").segment_image("photo.jpg", points=[(320, 240)])
    result.save_annotated("annotated.png")

Boxes given to `boxes=` are CORNER boxes (x1, y1, x2, y2); the API's own box is CENTER-based
and the SDK converts (see `sam2serve.client.prompt_builder`). For a local model without a
server, use `sam2serve.local.segmenter.Segmenter` (same methods, same results).
"""

from sam2serve.client.errors import (
    BadRequestError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    Sam2ConnectionError,
    Sam2Error,
    Sam2ServerError,
    Sam2TimeoutError,
    TooManyRequestsError,
    UnauthorizedError,
    UnavailableError,
)
from sam2serve.client.everything import AutoMaskPrediction, EverythingResult
from sam2serve.client.http import DEFAULT_BASE_URL, AsyncSam2Client, Sam2Client
from sam2serve.client.options import SegmentOptions
from sam2serve.client.prompt_builder import box_xyxy_to_center, point, prompt
from sam2serve.client.results import EmbedResult, MaskPrediction, SegmentResult
from sam2serve.client.video import AsyncVideoSession, VideoFrame, VideoSession

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncSam2Client",
    "AsyncVideoSession",
    "AutoMaskPrediction",
    "BadRequestError",
    "ConflictError",
    "EmbedResult",
    "EverythingResult",
    "InvalidRequestError",
    "MaskPrediction",
    "NotFoundError",
    "PayloadTooLargeError",
    "Sam2Client",
    "Sam2ConnectionError",
    "Sam2Error",
    "Sam2ServerError",
    "Sam2TimeoutError",
    "SegmentOptions",
    "SegmentResult",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnavailableError",
    "VideoFrame",
    "VideoSession",
    "box_xyxy_to_center",
    "point",
    "prompt",
]
