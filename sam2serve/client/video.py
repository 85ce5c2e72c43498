"""SDK for video sessions: open a clip, prompt objects, iterate over the propagation.

    with Sam2Client(url).video_session("clip.mp4") as session:
        session.add_prompt(frame=0, object_id=1, points=[(320, 240)])
        for frame in session.propagate():
            detections = frame.to_detections()   # supervision.Detections, tracker_id = object

    async with AsyncSam2Client(url) as client, await client.video_session("clip.mp4") as s:
        await s.add_prompt(frame=0, object_id=1, points=[(320, 240)])
        async for frame in s.propagate():
            ...

Both sessions send the requests `sam2serve.client.video_calls` builds and parse the answers
there; only the transport differs (a `sam2serve.client.transport` sender over the client's
connection). Stopping the iteration over `propagate()` (break, or closing the iterator)
closes the stream, and the server cancels the remaining frames.
Boxes are CORNER boxes (x1, y1, x2, y2); masks are (N, H, W) bool, one row per object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import numpy as np

from sam2serve.client.errors import Sam2ServerError
from sam2serve.client.transport import AsyncSender, Sender
from sam2serve.client.video_calls import (
    Call,
    PointLike,
    SessionCalls,
    VideoFrame,
    VideoLike,
    create_call,
    gone_is_fine,
)

__all__ = ["AsyncVideoSession", "VideoFrame", "VideoSession", "open_async_session", "open_session"]


class VideoSession(SessionCalls):
    """One server-side session; `close()` (or the context manager) deletes it."""

    def __init__(self, sender: Sender, info: dict[str, Any]) -> None:
        super().__init__(info, sender.params)
        self._sender = sender

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        return self._sender.send(call)

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[PointLike] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> VideoFrame:
        """Add/refine `object_id` on `frame` with points (x, y[, positive]), a corner box
        (x1, y1, x2, y2) and/or a (H, W) bool mask. Returns that frame's masks, all objects."""
        call = self._prompt_call(frame, object_id, points, box, mask)
        return self.parse_frame(self._send(call).json())

    def propagate(
        self,
        direction: str = "forward",
        *,
        start_frame: int | None = None,
        max_frames: int | None = None,
    ) -> Iterator[VideoFrame]:
        """Frames as the server computes them; stop iterating (or close) to cancel the rest."""
        call = self._propagate_call(direction, start_frame, max_frames)
        with self._sender.stream(call) as response:
            for line in response.iter_lines():
                frame = self.parse_line(line)
                if frame is not None:
                    yield frame

    def frame(self, index: int) -> VideoFrame:
        """The current masks of frame `index` (empty before any prompt/propagation reaches it)."""
        return self.parse_frame(self._send(self._frame_call(index)).json())

    def remove_object(self, object_id: int) -> None:
        self._send(self._remove_call(object_id))

    def reset(self) -> None:
        self._send(self._reset_call())

    def close(self) -> None:
        """Delete the session on the server (a session already gone is fine)."""
        try:
            self._send(self._delete_call())
        except Sam2ServerError as exc:
            gone_is_fine(exc)


class AsyncVideoSession(SessionCalls):
    """The asyncio twin of `VideoSession`: same methods, `await` them (`async for` over
    `propagate()`); `aclose()` (or `async with`) deletes the session."""

    def __init__(self, sender: AsyncSender, info: dict[str, Any]) -> None:
        super().__init__(info, sender.params)
        self._sender = sender

    async def __aenter__(self) -> AsyncVideoSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        return await self._sender.send(call)

    async def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[PointLike] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> VideoFrame:
        """See `VideoSession.add_prompt`."""
        call = self._prompt_call(frame, object_id, points, box, mask)
        return self.parse_frame((await self._send(call)).json())

    async def propagate(
        self,
        direction: str = "forward",
        *,
        start_frame: int | None = None,
        max_frames: int | None = None,
    ) -> AsyncIterator[VideoFrame]:
        """Frames as the server computes them. Leaving the `async for` closes the stream (the
        server cancels the rest); `contextlib.aclosing(session.propagate())` does it at once."""
        call = self._propagate_call(direction, start_frame, max_frames)
        async with self._sender.stream(call) as response:
            async for line in response.aiter_lines():
                frame = self.parse_line(line)
                if frame is not None:
                    yield frame

    async def frame(self, index: int) -> VideoFrame:
        """See `VideoSession.frame`."""
        return self.parse_frame((await self._send(self._frame_call(index))).json())

    async def remove_object(self, object_id: int) -> None:
        await self._send(self._remove_call(object_id))

    async def reset(self) -> None:
        await self._send(self._reset_call())

    async def aclose(self) -> None:
        """Delete the session on the server (a session already gone is fine)."""
        try:
            await self._send(self._delete_call())
        except Sam2ServerError as exc:
            gone_is_fine(exc)

    close = aclose


def open_session(sender: Sender, video: VideoLike, *, model: str | None = None) -> VideoSession:
    """Upload a clip file/bytes, point the server at an https URL, or send a list of frames."""
    response = sender.send(create_call(video, model, sender.params))
    return VideoSession(sender, response.json())


async def open_async_session(
    sender: AsyncSender, video: VideoLike, *, model: str | None = None
) -> AsyncVideoSession:
    """See `open_session`."""
    response = await sender.send(create_call(video, model, sender.params))
    return AsyncVideoSession(sender, response.json())
