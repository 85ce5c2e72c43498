"""Video sessions over HTTP on the tiny model: lifecycle, streaming, bad input, caps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam2serve.media import postprocess
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from tests.conftest import encode_image

pytestmark = [pytest.mark.video]
BASE = "/sam2/video/sessions"
FRAMES = 5


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return write_mp4(path, synthetic_frames(FRAMES)).read_bytes()


def _open(client, data: bytes, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(BASE, files={"video": ("clip.mp4", data, "video/mp4")}, headers=headers)


def _open_count(client) -> int:  # type: ignore[no-untyped-def]
    return client.get("/sam2/video/info").json()["open"]


def test_session_lifecycle(client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    created = _open(client, clip_bytes)
    assert created.status_code == 200, created.text
    info = created.json()
    assert (info["num_frames"], info["width"], info["height"]) == (FRAMES, 320, 240)
    assert info["fps"] == pytest.approx(10.0)
    sid = info["session_id"]

    prompt = {"frame_index": 1, "object_id": 7, "points": [{"x": 60, "y": 120}], "format": "rle"}
    r = client.post(f"{BASE}/{sid}/prompts", json=prompt)
    assert r.status_code == 200, r.text
    assert r.json()["frame_index"] == 1
    assert [o["object_id"] for o in r.json()["objects"]] == [7]
    box = {"frame_index": 2, "object_id": 9, "box": {"x": 240, "y": 70, "width": 60, "height": 60}}
    r = client.post(f"{BASE}/{sid}/prompts", json=box)
    assert r.status_code == 200, r.text
    assert [o["object_id"] for o in r.json()["objects"]] == [7, 9]
    assert isinstance(r.json()["objects"][0]["mask"], list)  # json format: polygons

    with client.stream("POST", f"{BASE}/{sid}/propagate", json={"direction": "both"}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert lines and "error" not in lines[0], lines
    frames = [line["frame_index"] for line in lines]
    assert frames == [1, 2, 3, 4, 1, 0]  # forward from the first prompted frame, then back
    for line in lines:
        assert [o["object_id"] for o in line["objects"]] == [7, 9]
        for obj in line["objects"]:
            assert postprocess.rle_to_mask(obj["mask"]).shape == (240, 320)
            assert 0.0 <= obj["score"] <= 1.0

    last = {line["frame_index"]: line for line in lines}
    got = client.get(f"{BASE}/{sid}/frames/3").json()
    assert got == last[3]

    assert client.get("/info").json()["video"]["open"] == 1
    assert client.delete(f"{BASE}/{sid}/objects/7").status_code == 204
    r = client.post(f"{BASE}/{sid}/prompts", json=prompt)
    assert [o["object_id"] for o in r.json()["objects"]] == [9, 7]
    assert client.post(f"{BASE}/{sid}/reset").status_code == 204
    assert client.get(f"{BASE}/{sid}/frames/3").json()["objects"] == []
    assert client.delete(f"{BASE}/{sid}").status_code == 204
    r = client.post(f"{BASE}/{sid}/prompts", json=prompt)
    assert r.status_code == 404 and "does not exist" in r.json()["message"]
    assert _open_count(client) == 0


def test_propagate_limits_and_rle_mask_prompt(client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    sid = _open(client, clip_bytes).json()["session_id"]
    mask = np.zeros((240, 320), dtype=bool)
    mask[100:140, 40:80] = True
    rle = postprocess.mask_to_rle(mask)
    r = client.post(f"{BASE}/{sid}/prompts", json={"frame_index": 0, "object_id": 1, "mask": rle})
    assert r.status_code == 200, r.text
    body = {"start_frame": 0, "max_frames": 2, "format": "json"}
    with client.stream("POST", f"{BASE}/{sid}/propagate", json=body) as s:
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert [line["frame_index"] for line in lines] == [0, 1, 2]


def test_frames_list_input(client) -> None:  # type: ignore[no-untyped-def]
    frames = [{"type": "base64", "value": encode_image(f)} for f in synthetic_frames(3, 64, 48)]
    r = client.post(BASE, json={"frames": frames})
    assert r.status_code == 200, r.text
    assert (r.json()["num_frames"], r.json()["width"], r.json()["height"]) == (3, 64, 48)


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        (b"not a video at all", 400, "not a video"),
        ("truncated", 400, "video"),
        (b"", 400, "video"),
    ],
)
def test_bad_uploads_are_4xx_and_leak_nothing(  # type: ignore[no-untyped-def]
    client, clip_bytes: bytes, payload: bytes | str, status: int, words: str
) -> None:
    data = clip_bytes[: len(clip_bytes) // 2] if payload == "truncated" else payload
    r = _open(client, data)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert _open_count(client) == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (
            "prompts",
            {"frame_index": 99, "object_id": 1, "points": [{"x": 1, "y": 1}]},
            400,
            "frame_index",
        ),
        ("prompts", {"frame_index": 0, "object_id": 1}, 422, "body"),
        (
            "prompts",
            {"frame_index": -1, "object_id": 1, "points": [{"x": 1, "y": 1}]},
            422,
            "frame_index",
        ),
        (
            "prompts",
            {"frame_index": 0, "object_id": 1, "mask": {"size": [2, 2], "counts": "x"}},
            400,
            "mask",
        ),
        ("propagate", {}, 400, "session_id"),
        ("propagate", {"direction": "sideways"}, 422, "direction"),
    ],
)
def test_bad_requests_name_the_field(  # type: ignore[no-untyped-def]
    client, clip_bytes: bytes, path: str, body: dict, status: int, field: str
) -> None:
    sid = _open(client, clip_bytes).json()["session_id"]
    r = client.post(f"{BASE}/{sid}/{path}", json=body)
    assert r.status_code == status, r.text
    assert r.json().get("field") == field or field in r.json()["message"]


def test_unknown_things_are_404(client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    sid = _open(client, clip_bytes).json()["session_id"]
    assert client.delete(f"{BASE}/{sid}/objects/3").status_code == 404
    assert client.get(f"{BASE}/{sid}/frames/{FRAMES}").status_code == 400
    assert client.delete(f"{BASE}/vs_nope").status_code == 404
    assert (
        client.post(BASE, content=b"x", headers={"content-type": "text/plain"}).status_code == 400
    )


def test_caps(make_client, clip_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_SESSIONS", "1")
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_UPLOAD_BYTES", str(len(clip_bytes) + 1024))
    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_FRAMES", str(FRAMES))
    client = make_client()
    assert _open(client, clip_bytes).status_code == 200
    busy = _open(client, clip_bytes)
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    big = _open(client, clip_bytes + b"\0" * 4096)
    assert big.status_code == 413 and "MAX_UPLOAD_BYTES" in big.json()["message"]

    monkeypatch.setenv("SAM2SERVE_VIDEO_MAX_FRAMES", str(FRAMES - 1))
    client2 = make_client()
    long = _open(client2, clip_bytes)
    assert long.status_code == 413 and "MAX_FRAMES" in long.json()["message"]
    assert _open_count(client2) == 0


def test_idle_sessions_expire(
    make_client, clip_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SAM2SERVE_VIDEO_TTL_S", "0")
    client = make_client()
    sid = _open(client, clip_bytes).json()["session_id"]
    r = client.get(f"{BASE}/{sid}/frames/0")
    assert r.status_code == 404 and "expired" in r.json()["message"]
    assert _open_count(client) == 0


def test_sessions_belong_to_their_key(make_client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["alpha", "beta"])
    sid = _open(client, clip_bytes, authorization="Bearer alpha").json()["session_id"]
    other = client.get(f"{BASE}/{sid}/frames/0", headers={"authorization": "Bearer beta"})
    assert other.status_code == 404
    assert client.get(f"{BASE}/{sid}/frames/0").status_code == 401
    mine = client.get(f"{BASE}/{sid}/frames/0", headers={"authorization": "Bearer alpha"})
    assert mine.status_code == 200
    assert client.get("/sam2/video/info").status_code == 401  # memory figures need a key
    assert "video" not in client.get("/info").json()
    listed = client.get("/sam2/video/info", headers={"authorization": "Bearer beta"})
    assert listed.status_code == 200 and listed.json()["open"] == 1


def test_tmp_dirs_are_removed(client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    sid = _open(client, clip_bytes).json()["session_id"]
    session = client.app.state.services.video.store._sessions[sid]
    workdir = Path(session.workdir.name)
    assert (workdir / "frames.u8").is_file()
    client.delete(f"{BASE}/{sid}")
    assert not workdir.exists()


def test_closing_a_propagation_cancels_it_and_frees_the_session(  # type: ignore[no-untyped-def]
    tiny_weights_dir: Path, tmp_path: Path
) -> None:
    """A client that goes away mid-stream: the remaining frames are not computed, and the
    session is usable (not stuck busy) right after."""
    import asyncio

    from sam2serve.testing import registry_with_test_model
    from sam2serve.video.schema import PromptRequest, PropagateRequest
    from sam2serve.wiring import build_services
    from tests.conftest import tiny_settings

    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(FRAMES))

    async def scenario() -> tuple[list[int], list[int]]:
        services = build_services(tiny_settings(tiny_weights_dir), registry_with_test_model())
        video = services.video
        try:
            info = await video.create_from_file(clip, "ns", None)
            prompt = PromptRequest(frame_index=0, object_id=1, points=[{"x": 60, "y": 120}])
            await video.add_prompt("ns", info.session_id, prompt)
            stream = await video.propagate("ns", info.session_id, PropagateRequest())
            first = [(await anext(stream)).frame_index]
            await stream.aclose()
            session = video.store.get("ns", info.session_id)
            assert not session.lock.locked()
            computed = sorted(session.results)
            again = await video.propagate("ns", info.session_id, PropagateRequest())
            return first + computed, [f.frame_index async for f in again]
        finally:
            await services.aclose()

    partial, full = asyncio.run(scenario())
    assert partial == [0, 0]  # one frame streamed, only it (and the prompt frame) computed
    assert full == list(range(FRAMES))


def test_openapi_documents_the_video_routes(client) -> None:  # type: ignore[no-untyped-def]
    """Bodies in components with examples that work, every error answer documented, and a
    malformed path parameter answered as documented (JSON 422 naming it)."""
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    schemas = doc["components"]["schemas"]
    for name in ("CreateSessionRequest", "PromptRequest", "PropagateRequest"):
        assert schemas[name].get("examples"), name
    for path, item in paths.items():
        if not path.startswith(BASE):
            continue
        for method, op in item.items():
            for code in ("401", "404", "409", "422", "500"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (method, path, code)
    create = paths[BASE]["post"]["requestBody"]["content"]
    assert set(create) == {"multipart/form-data", "application/json"}
    r = client.post(BASE, json=create["application/json"]["example"])
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    prompt = paths[BASE + "/{session_id}/prompts"]["post"]["requestBody"]["content"]
    r = client.post(f"{BASE}/{sid}/prompts", json=prompt["application/json"]["example"])
    assert r.status_code == 200, r.text
    propagate = paths[BASE + "/{session_id}/propagate"]["post"]["requestBody"]["content"]
    example = propagate["application/json"]["example"]
    with client.stream("POST", f"{BASE}/{sid}/propagate", json=example) as s:
        assert s.status_code == 200
        assert [json.loads(line)["frame_index"] for line in s.iter_lines() if line] == [0, 1]
    r = client.get(f"{BASE}/{sid}/frames/not-a-number")
    assert r.status_code == 422 and r.json()["field"] == "frame_index", r.text
    assert client.delete(f"{BASE}/{sid}").status_code == 204


@pytest.mark.openvino
def test_fast_precision_tracks_on_the_compiled_graphs(  # type: ignore[no-untyped-def]
    make_client, clip_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`SAM2SERVE_VIDEO_PRECISION=fast` on the OpenVINO runtime: memory attention and the
    memory encoder run as compiled graphs (said in /sam2/video/info), frames stream as usual."""
    monkeypatch.setenv("SAM2SERVE_VIDEO_PRECISION", "fast")
    client = make_client(runtime="auto")
    sid = _open(client, clip_bytes).json()["session_id"]
    prompt = {"frame_index": 0, "object_id": 1, "points": [{"x": 60, "y": 120}], "format": "rle"}
    assert client.post(f"{BASE}/{sid}/prompts", json=prompt).status_code == 200
    with client.stream("POST", f"{BASE}/{sid}/propagate", json={"format": "rle"}) as s:
        lines = [json.loads(line) for line in s.iter_lines() if line]
    assert [line["frame_index"] for line in lines] == list(range(FRAMES)), lines[:1]
    info = client.get("/sam2/video/info").json()
    parts = info["parts"]["test_tiny"]
    assert info["precision"] == "fast"
    assert parts["image_encoder"] == "image runtime"
    assert parts["memory_attention"] == parts["memory_encoder"]
    assert parts["memory_attention"] in ("openvino-bf16", "openvino-f32")
