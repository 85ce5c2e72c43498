"""In-process video sessions: `Segmenter.video_session(...)`, the HTTP session's methods and
`VideoFrame` results on a local model, no server.

    with Segmenter() as seg, seg.video_session("clip.mp4") as session:
        session.add_prompt(frame=0, object_id=1, points=[(320, 240)])
        for frame in session.propagate():
            detections = frame.to_detections()

It runs the server's own `VideoService` on the Segmenter's loop, through the `LocalCaller` the
Segmenter hands its sessions: the request bodies are the HTTP session's
(`sam2serve.client.video_calls`), validated by the same wire models, and the answers are
parsed by the same code, so the masks are the server's. Errors are the SDK's typed errors.
Stopping the iteration over `propagate()` cancels the remaining frames before it returns: the
session is free for the next call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from sam2serve.client.errors import Sam2ServerError
from sam2serve.client.image_encode import is_url
from sam2serve.client.video_calls import (
    PointLike,
    SessionCalls,
    VideoFrame,
    VideoLike,
    clip_bytes,
    frames_body,
    prompt_body,
    propagate_body,
)
from sam2serve.video.schema import CreateSessionRequest, PromptRequest, PropagateRequest
from sam2serve.video.service import VideoService, clip_too_large
from sam2serve.wiring import PUBLIC_NAMESPACE

__all__ = ["LocalCaller", "LocalVideoSession", "open_local_session"]

T = TypeVar("T")


class LocalCaller(Protocol):
    """What a local session needs of the `Segmenter` that opened it (which hands it one):
    request bodies validated by the wire models under the Segmenter's limits, and coroutines
    run on the Segmenter's loop. Both raise the SDK's typed errors (`BadRequestError`, ...);
    `call` raises RuntimeError once the Segmenter is closed."""

    def validate(self, model: type[T], body: dict[str, Any]) -> T: ...

    def call(self, coro: Coroutine[Any, Any, T]) -> T: ...


class LocalVideoSession(SessionCalls):
    """A video session of a `Segmenter`; `close()` (or the context manager) ends it."""

    def __init__(self, caller: LocalCaller, video: VideoService, info: dict[str, Any]) -> None:
        super().__init__(info)
        self._caller = caller
        self._video = video

    def __enter__(self) -> LocalVideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[PointLike] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> VideoFrame:
        """See `VideoSession.add_prompt` (same arguments, same result)."""
        body = prompt_body(frame, object_id, points, box, mask)
        request = self._caller.validate(PromptRequest, body)
        answer = self._caller.call(
            self._video.add_prompt(PUBLIC_NAMESPACE, self.session_id, request)
        )
        return self.parse_frame(answer.model_dump(mode="json"))

    def propagate(
        self,
        direction: str = "forward",
        *,
        start_frame: int | None = None,
        max_frames: int | None = None,
    ) -> Iterator[VideoFrame]:
        """See `VideoSession.propagate`. Each frame is computed when asked for; stopping the
        iteration (break, `close()`) cancels the rest before it returns."""
        body = propagate_body(direction, start_frame, max_frames)
        request = self._caller.validate(PropagateRequest, body)
        frames = self._caller.call(
            self._video.propagate(PUBLIC_NAMESPACE, self.session_id, request)
        )
        try:
            while True:
                answer = self._caller.call(_next(frames))
                if answer is None:
                    return
                yield self.parse_frame(answer.model_dump(mode="json"))
        finally:
            self._caller.call(frames.aclose())  # waits for a step in flight, frees the session

    def frame(self, index: int) -> VideoFrame:
        """See `VideoSession.frame`."""

        async def read() -> Any:
            return self._video.frame(PUBLIC_NAMESPACE, self.session_id, index, "rle")

        return self.parse_frame(self._caller.call(read()).model_dump(mode="json"))

    def remove_object(self, object_id: int) -> None:
        self._caller.call(self._video.remove_object(PUBLIC_NAMESPACE, self.session_id, object_id))

    def reset(self) -> None:
        self._caller.call(self._video.reset(PUBLIC_NAMESPACE, self.session_id))

    def close(self) -> None:
        """End the session and free its memory (a session already gone is fine)."""

        async def delete() -> None:
            self._video.delete(PUBLIC_NAMESPACE, self.session_id)

        with contextlib.suppress(RuntimeError):  # the Segmenter was closed first: all gone
            try:
                self._caller.call(delete())
            except Sam2ServerError as exc:
                if exc.status != 404:
                    raise


def open_local_session(
    caller: LocalCaller, video_service: VideoService, video: VideoLike, model: str | None
) -> LocalVideoSession:
    """A clip file/bytes (decoded like an upload, under the same caps), an https URL (fetched
    under the server's URL policy) or a list of frames."""
    if isinstance(video, str) and is_url(video):
        body: dict[str, Any] = {"url": video, "sam2_version_id": model}
        request = caller.validate(CreateSessionRequest, body)
        info = caller.call(video_service.create(request, PUBLIC_NAMESPACE))
    elif isinstance(video, str | os.PathLike | bytes):
        info = caller.call(_create_from_clip(video_service, video, model))
    else:
        request = caller.validate(CreateSessionRequest, frames_body(video, model))
        info = caller.call(video_service.create(request, PUBLIC_NAMESPACE))
    return LocalVideoSession(caller, video_service, info.model_dump(mode="json"))


async def _create_from_clip(
    video_service: VideoService, video: str | os.PathLike[str] | bytes, model: str | None
) -> Any:
    cap = video_service.settings.max_upload_bytes
    if not isinstance(video, bytes):
        path = Path(video)
        if path.is_file() and path.stat().st_size > cap:
            raise clip_too_large(cap)
        if path.is_file():
            return await video_service.create_from_file(path, PUBLIC_NAMESPACE, model)
    data = clip_bytes(video)  # a missing file raises FileNotFoundError here, as on the client
    if len(data) > cap:
        raise clip_too_large(cap)
    with tempfile.TemporaryDirectory(prefix="sam2-video-local-") as tmp:
        clip = Path(tmp) / "clip"
        await asyncio.to_thread(clip.write_bytes, data)
        return await video_service.create_from_file(clip, PUBLIC_NAMESPACE, model)


async def _next(frames: AsyncIterator[Any]) -> Any:
    return await anext(frames, None)
