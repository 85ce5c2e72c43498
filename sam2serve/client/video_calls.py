"""Video sessions' requests and answers, built and parsed in one place for every session kind:
the blocking and asyncio HTTP sessions (`sam2serve.client.video`) only send what is built
here, and the in-process session (`sam2serve.local.video`) validates the same bodies.

Boxes are CORNER boxes (x1, y1, x2, y2), as everywhere in the SDK. Masks are (N, H, W) bool in
the clip's pixels, one row per object (`object_ids`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from sam2serve.client.errors import Sam2ServerError, error_for_status, error_from_response
from sam2serve.client.image_encode import ImageLike, encode_image, is_url
from sam2serve.client.prompt_builder import box_xyxy_to_center, point
from sam2serve.media import postprocess

if TYPE_CHECKING:
    import supervision

VideoLike = str | os.PathLike[str] | bytes | Sequence[ImageLike]
PointLike = tuple[float, float] | tuple[float, float, bool]
BASE = "/sam2/video/sessions"
#: opening a session uploads and decodes the whole clip: allow it time
CREATE_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


@dataclass(frozen=True)
class VideoFrame:
    """Masks of all objects on one frame: masks (N, H, W) bool, scores (N,) in [0, 1]."""

    frame_index: int
    object_ids: list[int]
    masks: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_json(cls, answer: dict[str, Any], size: tuple[int, int]) -> VideoFrame:
        h, w = size
        masks, ids, scores = [], [], []
        for obj in answer["objects"]:
            mask = obj["mask"]
            if isinstance(mask, dict):
                masks.append(postprocess.rle_to_mask(mask))
            else:
                masks.append(postprocess.polygons_to_mask(mask, h, w))
            ids.append(int(obj["object_id"]))
            scores.append(float(obj["score"]))
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        return cls(
            int(answer["frame_index"]), ids, stacked.astype(bool), np.asarray(scores, np.float32)
        )

    def to_detections(self) -> supervision.Detections:
        """`supervision.Detections`: masks, xyxy boxes from the masks (zeros when empty),
        confidence = score, class_id = tracker_id = object id."""
        try:
            import supervision as sv
        except ImportError as exc:
            raise ImportError(
                "to_detections() needs supervision: pip install 'sam2serve[supervision]'"
            ) from exc
        boxes = []
        for m in self.masks:
            ys, xs = np.nonzero(m)
            boxes.append((xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else (0, 0, 0, 0))
        ids = np.asarray(self.object_ids, dtype=int)
        return sv.Detections(
            xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            mask=self.masks,
            confidence=self.scores,
            class_id=ids,
            tracker_id=ids,
        )


# -- bodies (shared with the in-process session) ----------------------------------------


def prompt_body(
    frame: int,
    object_id: int,
    points: Sequence[PointLike] | None,
    box: Sequence[float] | None,
    mask: np.ndarray | None,
) -> dict[str, Any]:
    """The prompts request: points (x, y[, positive]), a corner box, or a (H, W) bool mask."""
    body: dict[str, Any] = {"frame_index": frame, "object_id": object_id, "format": "rle"}
    if points:
        body["points"] = [point(*p) for p in points]
    if box is not None:
        body["box"] = box_xyxy_to_center(*box)
    if mask is not None:
        body["mask"] = postprocess.mask_to_rle(np.asarray(mask, dtype=bool))
    return body


def propagate_body(
    direction: str, start_frame: int | None, max_frames: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"direction": direction, "format": "rle"}
    if start_frame is not None:
        body["start_frame"] = start_frame
    if max_frames is not None:
        body["max_frames"] = max_frames
    return body


def frames_body(frames: Sequence[ImageLike], model: str | None) -> dict[str, Any]:
    """A clip given as a list of images (paths, bytes, arrays, PIL images or URLs)."""
    body: dict[str, Any] = {"frames": [encode_image(f).payload for f in frames]}
    if model:
        body["sam2_version_id"] = model
    return body


def clip_bytes(video: str | os.PathLike[str] | bytes) -> bytes:
    return video if isinstance(video, bytes) else Path(video).read_bytes()


# -- HTTP requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request, sent as it is by the blocking or the asyncio transport."""

    method: str
    url: str
    params: dict[str, str]
    json: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    #: None: no timeout (a propagation streams for as long as the clip takes)
    timeout: Any = httpx.USE_CLIENT_DEFAULT

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `httpx.Client.request` / `.stream` (and their async twins)."""
        out: dict[str, Any] = {"params": self.params, "timeout": self.timeout}
        if self.json is not None:
            out["json"] = self.json
        if self.files is not None:
            out["files"] = self.files
        return out


def create_call(video: VideoLike, model: str | None, params: dict[str, str]) -> Call:
    """Upload a clip file/bytes, point the server at an https URL, or send a list of frames."""
    params = dict(params)
    if isinstance(video, str) and is_url(video):
        body: dict[str, Any] = {"url": video}
        if model:
            body["sam2_version_id"] = model
        return Call("POST", BASE, params, json=body, timeout=CREATE_TIMEOUT)
    if isinstance(video, str | os.PathLike | bytes):
        if model:
            params["sam2_version_id"] = model
        files = {"video": ("clip", clip_bytes(video), "application/octet-stream")}
        return Call("POST", BASE, params, files=files, timeout=CREATE_TIMEOUT)
    return Call("POST", BASE, params, json=frames_body(video, model), timeout=CREATE_TIMEOUT)


def checked(response: httpx.Response) -> httpx.Response:
    """The response, or the SDK's typed error carrying the server's message."""
    if not response.is_success:
        raise error_from_response(response)
    return response


class SessionCalls:
    """What every session kind shares: the session's figures and how its answers parse.

    `info`: the server's session answer (session_id, num_frames, fps, width, height).
    """

    def __init__(self, info: dict[str, Any], params: dict[str, str] | None = None) -> None:
        self.info = info
        self.session_id: str = info["session_id"]
        self.num_frames: int = int(info["num_frames"])
        self.fps: float = float(info["fps"])
        self.width: int = int(info["width"])
        self.height: int = int(info["height"])
        self._params = dict(params or {})

    def parse_frame(self, answer: dict[str, Any]) -> VideoFrame:
        return VideoFrame.from_json(answer, (self.height, self.width))

    def parse_line(self, line: str) -> VideoFrame | None:
        """One NDJSON line of a propagation: a frame, None for a blank line, or the typed
        error the server reported in-band (the status was already sent)."""
        if not line.strip():
            return None
        answer = json.loads(line)
        if "error" in answer:
            err = answer["error"]
            message = err.get("message", "propagation failed")
            raise error_for_status(500, message, field=err.get("field"), body=err)
        return self.parse_frame(answer)

    # -- the HTTP calls; the transports send them ------------------------------------------

    def _url(self, suffix: str = "") -> str:
        return f"{BASE}/{self.session_id}{suffix}"

    def _prompt_call(
        self,
        frame: int,
        object_id: int,
        points: Sequence[PointLike] | None,
        box: Sequence[float] | None,
        mask: np.ndarray | None,
    ) -> Call:
        body = prompt_body(frame, object_id, points, box, mask)
        return Call("POST", self._url("/prompts"), self._params, json=body)

    def _propagate_call(
        self, direction: str, start_frame: int | None, max_frames: int | None
    ) -> Call:
        body = propagate_body(direction, start_frame, max_frames)
        return Call("POST", self._url("/propagate"), self._params, json=body, timeout=None)

    def _frame_call(self, index: int) -> Call:
        return Call("GET", self._url(f"/frames/{index}"), self._params)

    def _remove_call(self, object_id: int) -> Call:
        return Call("DELETE", self._url(f"/objects/{object_id}"), self._params)

    def _reset_call(self) -> Call:
        return Call("POST", self._url("/reset"), self._params)

    def _delete_call(self) -> Call:
        return Call("DELETE", self._url(), self._params)


def gone_is_fine(exc: Sam2ServerError) -> None:
    """Closing a session the server no longer has (expired, closed) is not an error."""
    if exc.status != 404:
        raise exc
