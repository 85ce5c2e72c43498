"""Video sessions three ways on the tiny model: the blocking HTTP session, the asyncio one and
the in-process `Segmenter.video_session`. Same clip, same prompts -> the same masks; early
stop, close and errors behave alike (typed errors with the server's message)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sam2serve.client import (
    AsyncSam2Client,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    Sam2Client,
)
from sam2serve.client.video_calls import VideoFrame
from sam2serve.local.segmenter import Segmenter
from sam2serve.testing import registry_with_test_model
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from tests.conftest import tiny_settings
from tests.integration.test_sdk import live_server

pytestmark = [pytest.mark.video]
FRAMES, WIDTH, HEIGHT = 3, 192, 144
DISC = [(66, 72), (150, 120, False)]  # on the disc of frames 0, 1 (centre 60 + 12 t, 72, r 24)
SQUARE = (124, 32, 160, 68)  # around the square of frame 2 (x 128..156, y 36..64)
KINDS = ["http", "async", "local"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_mp4(path, synthetic_frames(FRAMES, WIDTH, HEIGHT))


@pytest.fixture(scope="module")
def server(tiny_weights_dir: Path) -> Iterator[str]:
    with live_server(tiny_weights_dir) as url:
        yield url


@pytest.fixture(scope="module")
def segmenter(tiny_weights_dir: Path) -> Iterator[Segmenter]:
    settings = tiny_settings(tiny_weights_dir)
    with Segmenter(settings=settings, registry=registry_with_test_model()) as seg:
        yield seg


class Blocking:
    """An `AsyncVideoSession` driven from blocking test code on its own event loop, so one
    test body checks all three kinds."""

    def __init__(self, session: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._session, self._loop = session, loop

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._session, name)
        if name == "propagate":
            return lambda *a, **k: self._frames(attr(*a, **k))
        if callable(attr):
            return lambda *a, **k: self._loop.run_until_complete(attr(*a, **k))
        return attr

    def _frames(self, frames: AsyncIterator[VideoFrame]) -> Iterator[VideoFrame]:
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(anext(frames))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(frames.aclose())  # type: ignore[attr-defined]


@pytest.fixture
def open_session(
    server: str, segmenter: Segmenter
) -> Iterator[Callable[[str, Any], contextlib.AbstractContextManager[Any]]]:
    """open_session(kind, video) -> a context manager yielding a session of that kind."""
    loop = asyncio.new_event_loop()
    clients: list[Any] = []

    @contextlib.contextmanager
    def open_(kind: str, video: Any) -> Iterator[Any]:
        if kind == "local":
            with segmenter.video_session(video) as session:
                yield session
        elif kind == "http":
            client = Sam2Client(server)
            clients.append(client)
            with client.video_session(video) as session:
                yield session
        else:
            aclient = AsyncSam2Client(server)
            clients.append(aclient)
            session = Blocking(loop.run_until_complete(aclient.video_session(video)), loop)
            try:
                yield session
            finally:
                session.aclose()

    yield open_
    for client in clients:
        if isinstance(client, AsyncSam2Client):
            loop.run_until_complete(client.aclose())
        else:
            client.close()
    loop.close()


def script(session: Any) -> list[VideoFrame]:
    """Two objects on two frames, a propagation both ways, then every frame read back."""
    out = [session.add_prompt(1, 1, points=DISC), session.add_prompt(2, 2, box=SQUARE)]
    out += list(session.propagate("both"))
    return out + [session.frame(i) for i in range(FRAMES)]


async def async_script(session: Any) -> list[VideoFrame]:
    """`script`, written with the asyncio session's own `await` / `async for`."""
    out = [await session.add_prompt(1, 1, points=DISC), await session.add_prompt(2, 2, box=SQUARE)]
    out += [frame async for frame in session.propagate("both")]
    return out + [await session.frame(i) for i in range(FRAMES)]


def test_all_kinds_give_the_same_masks(server: str, segmenter: Segmenter, clip: Path) -> None:
    with Sam2Client(server) as client, client.video_session(clip) as session:
        expected = script(session)
        figures = (session.num_frames, session.fps, session.width, session.height)

    async def run_async() -> tuple[list[VideoFrame], tuple]:
        async with AsyncSam2Client(server) as client, await client.video_session(clip) as s:
            return await async_script(s), (s.num_frames, s.fps, s.width, s.height)

    with segmenter.video_session(clip) as session:
        local = script(session), (session.num_frames, session.fps, session.width, session.height)

    # add_prompt x2, forward from the first prompted frame to the end, backward to 0, reads
    indices = [1, 2, 1, 2, 1, 0, *range(FRAMES)]
    assert [f.frame_index for f in expected] == indices
    assert figures == (FRAMES, pytest.approx(10.0), WIDTH, HEIGHT)
    assert expected[1].object_ids == [1, 2] and expected[1].masks.shape == (2, HEIGHT, WIDTH)
    assert any(f.masks.any() for f in expected), "vacuous: the tiny model tracks nothing"
    for frames, got_figures in (asyncio.run(run_async()), local):
        assert got_figures == figures
        assert len(frames) == len(expected)
        for got, want in zip(frames, expected, strict=True):
            assert (got.frame_index, got.object_ids) == (want.frame_index, want.object_ids)
            np.testing.assert_array_equal(got.masks, want.masks)
            np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)
    detections = local[0][4].to_detections()
    assert list(detections.tracker_id) == [1, 2]


def _until_free(session: Any) -> VideoFrame:
    """add_prompt, retried while the server still winds down the cancelled stream (409)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return session.add_prompt(0, 1, points=DISC)
        except ConflictError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_early_frees_the_session(open_session: Any, clip: Path, kind: str) -> None:
    with open_session(kind, clip) as session:
        session.add_prompt(0, 1, points=DISC)
        for frame in session.propagate():
            assert frame.frame_index == 0
            break
        if kind == "local":  # computed on demand: nothing ran past the break, free at once
            assert session.frame(FRAMES - 1).object_ids == []
            session.add_prompt(0, 1, points=DISC)
        else:
            _until_free(session)
        assert [f.frame_index for f in session.propagate(max_frames=1)] == [0, 1]


def test_async_break_closes_the_stream(server: str, clip: Path) -> None:
    """Leaving `async for` (no explicit aclose) lets the server go: the session is free."""

    async def go() -> list[int]:
        async with AsyncSam2Client(server) as client, await client.video_session(clip) as session:
            await session.add_prompt(0, 1, points=DISC)
            async for _ in session.propagate():
                break
            deadline = time.monotonic() + 60
            while True:
                try:
                    await session.add_prompt(0, 1, points=DISC)
                    break
                except ConflictError:
                    assert time.monotonic() < deadline, "the session stayed busy"
                    await asyncio.sleep(0.05)
            return [f.frame_index async for f in session.propagate(max_frames=1)]

    assert asyncio.run(go()) == [0, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_close_deletes_the_session(open_session: Any, clip: Path, kind: str) -> None:
    with open_session(kind, clip) as session:
        session.add_prompt(0, 1, points=DISC)
    with pytest.raises(NotFoundError) as info:
        session.frame(0)
    assert "session" in info.value.message
    session.close()  # closing a session already gone is fine


def _prompt_then_propagate_from_9(session: Any) -> None:
    session.add_prompt(0, 1, box=SQUARE)
    list(session.propagate(start_frame=9))


# (call on a session, error class, start of the server's message, field)
ERRORS: list[tuple[Callable[[Any], Any], type, str, str]] = [
    (lambda s: s.frame(FRAMES), BadRequestError, "frame_index 3 is out of range", "frame_index"),
    (
        lambda s: s.add_prompt(FRAMES + 3, 1, points=DISC),
        BadRequestError,
        "frame_index 6 is out of range: the video has 3 frames (0..2)",
        "frame_index",
    ),
    (lambda s: s.remove_object(42), NotFoundError, "object_id 42 is not in this", "object_id"),
    (lambda s: list(s.propagate()), BadRequestError, "the session has no prompts", "session_id"),
    (_prompt_then_propagate_from_9, BadRequestError, "start_frame 9 is out of", "start_frame"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_errors_are_typed_with_the_servers_message(
    open_session: Any, clip: Path, kind: str
) -> None:
    with open_session(kind, clip) as session:
        for call, error, message, field in ERRORS:
            with pytest.raises(error) as info:
                call(session)
            assert info.value.message.startswith(message), info.value.message
            assert info.value.field == field


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", ["bytes", "frames"])
def test_clip_bytes_and_frame_lists(open_session: Any, clip: Path, kind: str, source: str) -> None:
    video = clip.read_bytes() if source == "bytes" else synthetic_frames(2, 64, 48)
    with open_session(kind, video) as session:
        expected = (FRAMES, WIDTH, HEIGHT) if source == "bytes" else (2, 64, 48)
        assert (session.num_frames, session.width, session.height) == expected


def test_url_clip_is_capped_by_the_video_upload_cap(tiny_weights_dir: Path, clip: Path) -> None:
    """A clip URL may be larger than the image download cap (url_max_bytes) up to the video
    upload cap; over that, 413 naming SAM2SERVE_VIDEO_MAX_UPLOAD_BYTES, on the `url` field."""
    from sam2serve.media.fetch import UrlFetcher
    from sam2serve.video.config import VideoSettings

    data = clip.read_bytes()
    settings = tiny_settings(tiny_weights_dir, url_max_bytes=1024)
    assert len(data) > 1024

    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=data))
    fetcher = UrlFetcher(settings, resolver=resolve, transport=transport)
    url = "https://clips.example.test/clip.mp4"
    with Segmenter(settings=settings, registry=registry_with_test_model()) as seg:
        seg._run(seg._service.fetcher.aclose())
        seg._service.fetcher = fetcher  # the service's fetcher, on a fake network
        with seg.video_session(url) as session:
            assert (session.num_frames, session.width) == (FRAMES, WIDTH)
        seg._services.video.settings = VideoSettings(max_upload_bytes=len(data) - 1)
        with pytest.raises(PayloadTooLargeError) as info:
            seg.video_session(url)
    assert info.value.field == "url"
    assert f"over the {len(data) - 1} byte cap" in info.value.message
    assert "SAM2SERVE_VIDEO_MAX_UPLOAD_BYTES" in info.value.message
