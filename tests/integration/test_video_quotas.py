"""Video sessions' shares and refusals: sessions per API key (429 naming the cap), objects per
session (413), clip size and length from the container header before any frame is decoded,
and a propagation whose client goes away stopping between two objects of a frame."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from sam2serve.runtime.video_tracker import STOP_KEY, Stopped
from sam2serve.testing import registry_with_test_model
from sam2serve.video import frames as video_frames
from sam2serve.video.schema import PromptRequest, PropagateRequest
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from sam2serve.wiring import build_services
from tests.conftest import encode_image, tiny_settings

pytestmark = [pytest.mark.video]
BASE = "/sam2/video/sessions"
FRAMES = 5


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", synthetic_frames(FRAMES))


def _open(client, clip: Path, key: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {key}"} if key else {}
    files = {"video": ("clip.mp4", clip.read_bytes(), "video/mp4")}
    return client.post(BASE, files=files, headers=headers)


def test_one_key_cannot_take_every_session(  # type: ignore[no-untyped-def]
    make_client, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_SESSIONS", "3")
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_SESSIONS_PER_KEY", "1")
    client = make_client(api_keys=["alpha", "beta"])
    first = _open(client, clip_path, "alpha")
    assert first.status_code == 200, first.text
    again = _open(client, clip_path, "alpha")
    assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
    assert "SAM2SERVE_VIDEO_MAX_SESSIONS_PER_KEY" in again.json()["message"]
    assert _open(client, clip_path, "beta").status_code == 200  # the other key still opens
    sid = first.json()["session_id"]
    gone = client.delete(f"{BASE}/{sid}", headers={"authorization": "Bearer alpha"})
    assert gone.status_code == 204
    assert _open(client, clip_path, "alpha").status_code == 200  # its share is free again


def test_without_keys_only_the_global_cap_counts(  # type: ignore[no-untyped-def]
    make_client, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_SESSIONS", "2")
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_SESSIONS_PER_KEY", "1")
    client = make_client()  # one tenant: a per-key share would only shrink its capacity
    assert [_open(client, clip_path).status_code for _ in range(3)] == [200, 200, 503]


def test_objects_per_session_are_capped(  # type: ignore[no-untyped-def]
    make_client, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_OBJECTS", "2")
    client = make_client()
    sid = _open(client, clip_path).json()["session_id"]

    def prompt(obj: int):  # type: ignore[no-untyped-def]
        body = {"frame_index": 0, "object_id": obj, "points": [{"x": 20 * obj, "y": 100}]}
        return client.post(f"{BASE}/{sid}/prompts", json=body)

    assert [prompt(1).status_code, prompt(2).status_code] == [200, 200]
    third = prompt(3)
    assert third.status_code == 413 and third.json()["field"] == "object_id"
    assert "SAM2SERVE_VIDEO_MAX_OBJECTS" in third.json()["message"]
    assert prompt(2).status_code == 200  # refining an object it has is fine
    assert client.delete(f"{BASE}/{sid}/objects/1").status_code == 204
    assert prompt(3).status_code == 200


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SAM2SERVE_VIDEO_MAX_FRAMES": str(FRAMES - 1)}, "SAM2SERVE_VIDEO_MAX_FRAMES"),
        ({"SAM2SERVE_VIDEO_MAX_PIXELS": str(320 * 240 - 1)}, "SAM2SERVE_VIDEO_MAX_PIXELS"),
    ],
)
def test_clip_caps_come_from_the_header_before_any_frame_is_decoded(  # type: ignore[no-untyped-def]
    make_client, clip_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict, setting: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def never(*_: object) -> None:
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(video_frames, "_decoded", never)
    client = make_client()
    r = _open(client, clip_path)
    assert r.status_code == 413 and setting in r.json()["message"], r.text
    video = client.app.state.services.video
    assert len(video.store) == 0 and video._trackers == {}  # no model loaded either


def test_frame_list_pixels_come_from_the_header(  # type: ignore[no-untyped-def]
    make_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_PIXELS", str(64 * 48 - 1))
    decoded: list[object] = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or original(im)
    )
    client = make_client()
    frames = [{"type": "base64", "value": encode_image(f)} for f in synthetic_frames(2, 64, 48)]
    r = client.post(BASE, json={"frames": frames})
    assert r.status_code == 413 and "SAM2SERVE_VIDEO_MAX_PIXELS" in r.json()["message"]
    assert decoded == []


OBJECTS = 6


def _prompts() -> list[PromptRequest]:
    return [
        PromptRequest(frame_index=0, object_id=obj, points=[{"x": 30 + 40 * obj, "y": 120}])
        for obj in range(1, OBJECTS + 1)
    ]


def test_a_propagation_whose_client_leaves_stops_within_the_frame(  # type: ignore[no-untyped-def]
    tiny_weights_dir: Path, clip_path: Path
) -> None:
    """The client goes away while frame 1's objects are being tracked: the step stops before
    its next object (2 of 6 done), the session is free at once, and propagating again gives
    the masks of a propagation never interrupted."""

    async def scenario() -> tuple[list[int], dict, dict]:
        settings = tiny_settings(tiny_weights_dir)
        services = build_services(settings, registry_with_test_model())
        video = services.video
        try:
            sid = (await video.create_from_file(clip_path, "ns", None)).session_id
            for prompt in _prompts():
                await video.add_prompt("ns", sid, prompt)
            session = video.store.get("ns", sid)
            model, state = session.tracker.model, session.state

            # stop flag set before a step: it raises before any model call
            session.tracker.stop(state)
            with pytest.raises(Stopped):
                next(session.tracker.propagate(state, None, None, False))
            session.tracker.resume(state)

            checked = model._run_single_frame_inference
            done: list[int] = []
            midway = threading.Event()

            def watched(*args: object, **kwargs: object) -> object:
                out = checked(*args, **kwargs)  # raises Stopped once the flag is set
                done.append(int(kwargs["frame_idx"]))  # type: ignore[call-overload]
                if done.count(1) == 2:
                    midway.set()
                    state[STOP_KEY].wait(10)  # hold the step until its client has gone
                return out

            model._run_single_frame_inference = watched
            stream = await video.propagate("ns", sid, PropagateRequest(format="rle"))
            assert (await anext(stream)).frame_index == 0  # the prompted frame
            step = asyncio.ensure_future(anext(stream))
            await asyncio.get_running_loop().run_in_executor(None, midway.wait, 30)
            step.cancel()  # the client goes away during frame 1
            with pytest.raises(asyncio.CancelledError):
                await step
            await stream.aclose()
            frame_1_calls = done.count(1)
            assert not session.lock.locked() and not state[STOP_KEY].is_set()
            model._run_single_frame_inference = checked

            resumed = {}
            async for fm in await video.propagate("ns", sid, PropagateRequest(format="rle")):
                resumed[fm.frame_index] = fm
            # a fresh session, the same prompts, never interrupted
            other = (await video.create_from_file(clip_path, "ns", None)).session_id
            for prompt in _prompts():
                await video.add_prompt("ns", other, prompt)
            clean = {}
            async for fm in await video.propagate("ns", other, PropagateRequest(format="rle")):
                clean[fm.frame_index] = fm
            return [frame_1_calls], _masks(resumed), _masks(clean)
        finally:
            await services.aclose()

    (calls,), resumed, clean = asyncio.run(scenario())
    assert calls == 2  # of 6 objects: stopped within the frame
    assert sorted(resumed) == sorted(clean) == list(range(FRAMES))
    for index, masks in clean.items():
        assert np.array_equal(resumed[index], masks), index


def _masks(frames: dict) -> dict[int, np.ndarray]:
    """frame index -> (objects, H, W) bool masks of the streamed results."""
    out = {}
    for index, result in frames.items():
        from sam2serve.media import postprocess

        out[index] = np.stack(
            [postprocess.rle_to_mask(o.mask.model_dump()) for o in result.objects]
        )
    return out


def test_a_disconnected_http_stream_stops_within_the_frame_before_the_session_is_free(
    tiny_weights_dir: Path, clip_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real HTTP (the stream is cancelled through Starlette's anyio task group, which
    cancels every later await too): once the session is free again no step is running, and
    the frame in progress was left between two objects."""
    import json
    import socket
    import time
    from urllib.parse import urlparse

    import httpx
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from tests.helpers_server import threaded_server

    calls: list[int] = []
    frame_1 = threading.Event()
    original = SAM2VideoPredictor._run_single_frame_inference

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(int(kwargs["frame_idx"]))
        if kwargs["frame_idx"] == 1:
            frame_1.set()
            time.sleep(0.3)  # a long frame: 6 objects x 0.3 s
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SAM2VideoPredictor, "_run_single_frame_inference", slow)
    with (
        threaded_server(tiny_settings(tiny_weights_dir)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        files = {"video": ("clip.mp4", clip_path.read_bytes(), "video/mp4")}
        sid = http.post(BASE, files=files).json()["session_id"]
        for prompt in _prompts():
            body = prompt.model_dump(mode="json", exclude_none=True)
            assert http.post(f"{BASE}/{sid}/prompts", json=body).status_code == 200
        target = urlparse(url)
        body = json.dumps({"direction": "forward"}).encode()
        sock = socket.create_connection((target.hostname, target.port))
        sock.sendall(
            (
                f"POST {BASE}/{sid}/propagate HTTP/1.1\r\nHost: x\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        assert frame_1.wait(30)
        sock.close()  # the client goes away during frame 1
        deadline = time.monotonic() + 30
        while http.delete(f"{BASE}/{sid}").status_code != 204:
            assert time.monotonic() < deadline, "the session stayed busy"
            time.sleep(0.05)
        at_free = len(calls)
        time.sleep(1.0)
        assert len(calls) == at_free  # nothing ran on it after it was let go
        assert 1 <= calls.count(1) < OBJECTS  # stopped within frame 1
