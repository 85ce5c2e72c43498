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
there; only the transport differs. Stopping the iteration over `propagate()` (break, or
closing the iterator) closes the stream, and the server cancels the remaining frames.
Boxes are CORNER boxes (x1, y1, x2, y2); masks are (N, H, W) bool, one row per object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from sam2serve.client.errors import Sam2ServerError, error_from_response
from sam2serve.client.video_calls import (
    Call,
    PointLike,
    SessionCalls,
    VideoFrame,
    VideoLike,
    checked,
    create_call,
    gone_is_fine,
)

if TYPE_CHECKING:
    from sam2serve.client.http import AsyncSam2Client, Sam2Client

__all__ = ["AsyncVideoSession", "VideoFrame", "VideoSession", "open_async_session", "open_session"]


class VideoSession(SessionCalls):
    """One server-side session; `close()` (or the context manager) deletes it."""

    def __init__(self, client: Sam2Client, info: dict[str, Any]) -> None:
        super().__init__(info, client._params)
        self._client = client

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        return _send(self._client, call)

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
        try:
            with self._client._http.stream(call.method, call.url, **call.kwargs()) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                for line in response.iter_lines():
                    frame = self.parse_line(line)
                    if frame is not None:
                        yield frame
        except httpx.TransportError as exc:
            raise self._client._transport_error(exc) from exc

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

    def __init__(self, client: AsyncSam2Client, info: dict[str, Any]) -> None:
        super().__init__(info, client._params)
        self._client = client

    async def __aenter__(self) -> AsyncVideoSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        return await _asend(self._client, call)

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
        try:
            async with self._client._http.stream(
                call.method, call.url, **call.kwargs()
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                async for line in response.aiter_lines():
                    frame = self.parse_line(line)
                    if frame is not None:
                        yield frame
        except httpx.TransportError as exc:
            raise self._client._transport_error(exc) from exc

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


def open_session(client: Sam2Client, video: VideoLike, *, model: str | None = None) -> VideoSession:
    """Upload a clip file/bytes, point the server at an https URL, or send a list of frames."""
    response = _send(client, create_call(video, model, client._params))
    return VideoSession(client, response.json())


async def open_async_session(
    client: AsyncSam2Client, video: VideoLike, *, model: str | None = None
) -> AsyncVideoSession:
    """See `open_session`."""
    response = await _asend(client, create_call(video, model, client._params))
    return AsyncVideoSession(client, response.json())


def _send(client: Sam2Client, call: Call) -> httpx.Response:
    try:
        response = client._http.request(call.method, call.url, **call.kwargs())
    except httpx.TransportError as exc:
        raise client._transport_error(exc) from exc
    return checked(response)


async def _asend(client: AsyncSam2Client, call: Call) -> httpx.Response:
    try:
        response = await client._http.request(call.method, call.url, **call.kwargs())
    except httpx.TransportError as exc:
        raise client._transport_error(exc) from exc
    return checked(response)
