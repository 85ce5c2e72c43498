"""SDK for video sessions: open a clip, prompt objects, iterate over the propagation.

    with Sam2Client(url).video_session("clip.mp4") as session:
        session.add_prompt(frame=0, object_id=1, points=[(320, 240)])
        for frame in session.propagate():
            detections = frame.to_detections()   # supervision.Detections, tracker_id = object

Boxes are CORNER boxes (x1, y1, x2, y2), as everywhere in the SDK. Masks are (N, H, W) bool in
the clip's pixels, one row per object (`object_ids`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from sam2serve import postprocess
from sam2serve.client.errors import Sam2ServerError, error_for_status, error_from_response
from sam2serve.client.image_encode import ImageLike, encode_image, is_url
from sam2serve.client.prompt_builder import box_xyxy_to_center, point

if TYPE_CHECKING:
    import supervision

    from sam2serve.client.http import Sam2Client

VideoLike = str | os.PathLike[str] | bytes | Sequence[ImageLike]
BASE = "/sam2/video/sessions"


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


class VideoSession:
    """One server-side session; `close()` (or the context manager) deletes it."""

    def __init__(self, client: Sam2Client, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.session_id: str = info["session_id"]
        self.num_frames: int = int(info["num_frames"])
        self.fps: float = float(info["fps"])
        self.width: int = int(info["width"])
        self.height: int = int(info["height"])

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _http(self) -> httpx.Client:
        return self._client._http

    def _url(self, suffix: str = "") -> str:
        return f"{BASE}/{self.session_id}{suffix}"

    def _check(self, response: httpx.Response) -> httpx.Response:
        if not response.is_success:
            raise error_from_response(response)
        return response

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[tuple[float, float] | tuple[float, float, bool]] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> VideoFrame:
        """Add/refine `object_id` on `frame` with points (x, y[, positive]), a corner box
        (x1, y1, x2, y2) and/or a (H, W) bool mask. Returns that frame's masks, all objects."""
        body: dict[str, Any] = {"frame_index": frame, "object_id": object_id, "format": "rle"}
        if points:
            body["points"] = [point(*p) for p in points]
        if box is not None:
            body["box"] = box_xyxy_to_center(*box)
        if mask is not None:
            body["mask"] = postprocess.mask_to_rle(np.asarray(mask, dtype=bool))
        answer = self._check(self._http.post(self._url("/prompts"), json=body, params=self._params))
        return VideoFrame.from_json(answer.json(), (self.height, self.width))

    @property
    def _params(self) -> dict[str, str]:
        return self._client._params

    def propagate(
        self,
        direction: str = "forward",
        *,
        start_frame: int | None = None,
        max_frames: int | None = None,
    ) -> Iterator[VideoFrame]:
        """Frames as the server computes them; stop iterating (or close) to cancel the rest."""
        body: dict[str, Any] = {"direction": direction, "format": "rle"}
        if start_frame is not None:
            body["start_frame"] = start_frame
        if max_frames is not None:
            body["max_frames"] = max_frames
        with self._http.stream(
            "POST", self._url("/propagate"), json=body, params=self._params, timeout=None
        ) as response:
            if not response.is_success:
                response.read()
                raise error_from_response(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                answer = json.loads(line)
                if "error" in answer:
                    err = answer["error"]
                    message = err.get("message", "propagation failed")
                    raise error_for_status(500, message, field=err.get("field"), body=err)
                yield VideoFrame.from_json(answer, (self.height, self.width))

    def frame(self, index: int) -> VideoFrame:
        """The current masks of frame `index` (empty before any prompt/propagation reaches it)."""
        answer = self._check(self._http.get(self._url(f"/frames/{index}"), params=self._params))
        return VideoFrame.from_json(answer.json(), (self.height, self.width))

    def remove_object(self, object_id: int) -> None:
        self._check(self._http.delete(self._url(f"/objects/{object_id}"), params=self._params))

    def reset(self) -> None:
        self._check(self._http.post(self._url("/reset"), params=self._params))

    def close(self) -> None:
        """Delete the session on the server (a session already gone is fine)."""
        try:
            self._check(self._http.delete(self._url(), params=self._params))
        except Sam2ServerError as exc:
            if exc.status != 404:
                raise


def open_session(client: Sam2Client, video: VideoLike, *, model: str | None = None) -> VideoSession:
    """Upload a clip file/bytes, point the server at an https URL, or send a list of frames."""
    params = dict(client._params)
    http = client._http
    timeout = httpx.Timeout(600.0, connect=10.0)
    if isinstance(video, str) and is_url(video):
        body: dict[str, Any] = {"url": video}
        if model:
            body["sam2_version_id"] = model
        response = http.post(BASE, json=body, params=params, timeout=timeout)
    elif isinstance(video, str | os.PathLike | bytes):
        data = Path(video).read_bytes() if not isinstance(video, bytes) else video
        if model:
            params["sam2_version_id"] = model
        files = {"video": ("clip", data, "application/octet-stream")}
        response = http.post(BASE, files=files, params=params, timeout=timeout)
    else:
        frames = [encode_image(f).payload for f in video]
        body = {"frames": frames}
        if model:
            body["sam2_version_id"] = model
        response = http.post(BASE, json=body, params=params, timeout=timeout)
    if not response.is_success:
        raise error_from_response(response)
    return VideoSession(client, response.json())
