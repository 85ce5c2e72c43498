"""sam2serve as the ML backend of a real Label Studio (installed from PyPI into its own venv,
cached between runs; SQLite, loopback, preset user and token), sam2serve on the tiny model
with an API key that Label Studio sends as Basic auth. Through Label Studio's own API: an
image project and a video project, tasks imported (uploads, fetched back by sam2serve with
Label Studio's token), the model connected, interactive annotation and stored predictions;
the stored results decode (label-studio-sdk's converter) to the masks and tracks our own API
gives. A screenshot of the labeling UI with our mask goes to artifacts/."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import label_studio_sdk.converter.brush as ls_brush
import pytest
from PIL import Image

from sam2serve.label_studio.results import mask_box_pct
from sam2serve.media import postprocess
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from tests.conftest import photos, tiny_settings
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.e2e.label_studio_env import LabelStudio, ensure_venv, running_label_studio
from tests.helpers_server import threaded_server

pytestmark = [pytest.mark.slow, pytest.mark.video, pytest.mark.timeout(900)]

KEY = "sam2serve-e2e-key"
IMAGE_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cup"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="Cup"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Cup"/></PolygonLabels>
</View>"""
VIDEO_CONFIG = """<View>
  <Video name="video" value="$video" framerate="10"/>
  <VideoRectangle name="box" toName="video"/>
  <Labels name="labels" toName="video"><Label value="Disc"/><Label value="Square"/></Labels>
</View>"""
FRAMES = 6
# keyframes in % of the 320 x 240 clip (exact in pixels) and as our API's pixel boxes
KEYFRAMES = {
    "disc": ("Disc", 1, [5.0, 30.0, 30.0, 40.0], {"x": 64, "y": 120, "width": 96, "height": 96}),
    "sq": ("Square", 2, [65.0, 10.0, 17.5, 25.0], {"x": 236, "y": 54, "width": 56, "height": 60}),
}


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    exe = ensure_venv()
    with running_label_studio(exe, tmp_path_factory.mktemp("ls-data")) as ls:
        yield ls


@pytest.fixture(scope="module")
def sam2serve(label_studio: LabelStudio, tiny_weights_dir: Path) -> Iterator[str]:
    settings = tiny_settings(
        tiny_weights_dir,
        api_keys=[KEY],
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
    )
    with threaded_server(settings) as url:
        yield url


def _ok(r: httpx.Response, *codes: int) -> Any:
    assert r.status_code in (codes or (200, 201)), (r.request.url, r.status_code, r.text[:2000])
    return r.json()


def _project(ls: httpx.Client, sam2serve: str, config: str, name: str, data: bytes) -> dict:
    """A project with `config`, one uploaded task (`name`), sam2serve connected to it."""
    project = _ok(ls.post("/api/projects", json={"title": name, "label_config": config}))
    pid = project["id"]
    _ok(ls.post(f"/api/projects/{pid}/import", files={"file": (name, data)}))
    [task] = _ok(ls.get("/api/tasks", params={"project": pid}))["tasks"]
    backend = _ok(
        ls.post(
            "/api/ml",
            json={
                "url": f"{sam2serve}/label-studio",
                "project": pid,
                "title": "sam2serve",
                "is_interactive": True,
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "label-studio",
                "basic_auth_pass": KEY,
            },
        )
    )
    assert backend["readable_state"] == "Connected", backend
    return {"project": pid, "task": task, "ml": backend["id"]}


def _api(sam2serve: str) -> httpx.Client:
    return httpx.Client(base_url=sam2serve, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


def _brush_mask(item: dict) -> Any:
    h, w = item["original_height"], item["original_width"]
    return ls_brush.decode_rle(bytes(item["value"]["rle"])).reshape(h, w, 4)[:, :, 3] > 0


def test_image_project(label_studio: LabelStudio, sam2serve: str) -> None:
    rgb = photos()["coffee"]  # 600 x 400
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    with label_studio.client() as ls, _api(sam2serve) as api:
        made = _project(ls, sam2serve, IMAGE_CONFIG, "coffee.png", buf.getvalue())
        assert made["task"]["data"]["image"].startswith("/data/upload/")
        click = {
            "type": "keypointlabels", "from_name": "kp", "to_name": "image",
            "original_width": 600, "original_height": 400, "is_positive": True,
            "value": {"x": 50.0, "y": 45.0, "width": 1, "keypointlabels": ["Cup"]},
        }  # fmt: skip
        answer = _ok(
            ls.post(
                f"/api/ml/{made['ml']}/interactive-annotating",
                json={"task": made["task"]["id"], "context": {"result": [click]}},
            )
        )
        assert "errors" not in answer, answer
        result = answer["data"]["result"]
        ours = _ok(
            api.post(
                "/sam2/segment_image",
                json={
                    "image": {"type": "base64", "value": base64.b64encode(buf.getvalue()).decode()},
                    "prompts": [{"points": [{"x": 300, "y": 180}]}],
                    "format": "rle",
                },
            )
        )["predictions"][0]
        expected = postprocess.rle_to_mask(ours["masks"])
        [brush] = [r for r in result if r["type"] == "brushlabels"]
        assert (_brush_mask(brush) == expected).all()
        assert answer["data"]["score"] == pytest.approx(ours["confidence"])
        assert label_studio.token not in json.dumps(answer)

        # the second click on the task: the image's features are cached, no new embed
        misses = _ok(api.get("/info"))["cache"]["misses"]
        moved = {**click, "value": {**click["value"], "x": 30.0, "y": 60.0}}
        second = _ok(
            ls.post(
                f"/api/ml/{made['ml']}/interactive-annotating",
                json={"task": made["task"]["id"], "context": {"result": [moved]}},
            )
        )
        assert second["data"]["result"] and _ok(api.get("/info"))["cache"]["misses"] == misses

        # stored as the annotator's annotation, read back from Label Studio, decoded
        stored = _ok(
            ls.post(f"/api/tasks/{made['task']['id']}/annotations", json={"result": result})
        )
        again = _ok(ls.get(f"/api/annotations/{stored['id']}"))
        [brush] = [r for r in again["result"] if r["type"] == "brushlabels"]
        assert (_brush_mask(brush) == expected).all() and brush["value"]["brushlabels"] == ["Cup"]
        assert any(r["type"] == "polygonlabels" for r in again["result"])

        # batch predictions without context (the SAM 3 seam): no error, no prediction stored
        _ok(
            ls.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": made["project"]},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
        )
        assert _ok(ls.get("/api/predictions", params={"task": made["task"]["id"]})) == []
        ml = _ok(ls.get(f"/api/ml/{made['ml']}"))
        assert ml["readable_state"] == "Connected" and not ml["error_message"]
        _screenshot(label_studio, made["project"], made["task"]["id"])


def _api_tracks(api: httpx.Client, clip: bytes) -> dict[int, dict[int, dict | None]]:
    """frame index -> object id -> box in %, from our own video API with the same prompts."""
    sid = _ok(api.post("/sam2/video/sessions", files={"video": ("c.mp4", clip, "video/mp4")}))[
        "session_id"
    ]
    for obj, (_, frame, _, box) in enumerate(KEYFRAMES.values()):
        body = {"frame_index": frame - 1, "object_id": obj, "box": box}
        _ok(api.post(f"/sam2/video/sessions/{sid}/prompts", json=body))
    out: dict[int, dict[int, dict | None]] = {}
    with api.stream("POST", f"/sam2/video/sessions/{sid}/propagate", json={}) as s:
        for line in s.iter_lines():
            if line:
                frame = json.loads(line)
                out[frame["frame_index"]] = {
                    o["object_id"]: mask_box_pct(postprocess.rle_to_mask(o["mask"]).astype(bool))
                    for o in frame["objects"]
                }
    api.delete(f"/sam2/video/sessions/{sid}")
    return out


def _check_tracks(result: list[dict], expected: dict[int, dict[int, dict | None]]) -> None:
    assert [r["id"] for r in result] == list(KEYFRAMES)
    for obj, (region, (label, first, pct, _)) in enumerate(
        zip(result, KEYFRAMES.values(), strict=True)
    ):
        assert region["type"] == "videorectangle" and region["value"]["labels"] == [label]
        sequence = {item["frame"]: item for item in region["value"]["sequence"]}
        assert sorted(sequence) == list(range(first, FRAMES + 1))
        for frame, item in sequence.items():
            got = [item["x"], item["y"], item["width"], item["height"]]
            box = expected[frame - 1][obj]
            want = pct if frame == first else [box["x"], box["y"], box["width"], box["height"]]
            assert got == pytest.approx(want), (region["id"], frame)


def test_video_project(label_studio: LabelStudio, sam2serve: str, tmp_path: Path) -> None:
    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(FRAMES), fps=10).read_bytes()
    keyframes = [
        {
            "id": rid, "type": "videorectangle", "from_name": "box", "to_name": "video",
            "value": {
                "labels": [label], "framesCount": FRAMES, "duration": FRAMES / 10,
                "sequence": [{
                    "frame": frame, "enabled": True, "rotation": 0, "time": (frame - 1) / 10,
                    "x": pct[0], "y": pct[1], "width": pct[2], "height": pct[3],
                }],
            },
        }
        for rid, (label, frame, pct, _) in KEYFRAMES.items()
    ]  # fmt: skip
    with label_studio.client() as ls, _api(sam2serve) as api:
        made = _project(ls, sam2serve, VIDEO_CONFIG, "clip.mp4", clip)
        expected = _api_tracks(api, clip)
        # interactive: the keyframes as context
        answer = _ok(
            ls.post(
                f"/api/ml/{made['ml']}/interactive-annotating",
                json={"task": made["task"]["id"], "context": {"result": keyframes}},
            )
        )
        assert "errors" not in answer, answer
        _check_tracks(answer["data"]["result"], expected)
        # batch: the annotator's saved keyframes -> a stored prediction with both tracks
        _ok(ls.post(f"/api/tasks/{made['task']['id']}/annotations", json={"result": keyframes}))
        _ok(
            ls.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": made["project"]},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
        )
        [prediction] = _ok(ls.get("/api/predictions", params={"task": made["task"]["id"]}))
        _check_tracks(prediction["result"], expected)


def _screenshot(label_studio: LabelStudio, project: int, task: int) -> None:
    """The labeling UI with the stored annotation (our mask), in headless Chromium."""
    if not CHROMIUM.exists():
        return
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            page.goto(f"{label_studio.url}/user/login/")
            page.fill("input[name=email]", label_studio.email)
            page.fill("input[name=password]", label_studio.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)
            page.goto(f"{label_studio.url}/projects/{project}/data?task={task}")
            try:
                page.wait_for_selector("canvas", state="attached")
                page.wait_for_timeout(5000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "label-studio.png"))
        finally:
            browser.close()
