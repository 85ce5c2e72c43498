"""The Label Studio ML backend routes on the tiny model, with Label Studio's request shapes:
auth (Basic, key as password), /setup without a model load, interactive image masks equal
to /sam2/segment_image's for the same prompt (brush RLE decoded by label-studio-sdk,
polygons), answers valid for label-studio-sdk's LabelInterface, the second click on a task
neither downloading nor embedding again, no-context image tasks without SAM 3 weights
answered empty with a note,
video keyframes tracked through a session with the tracks our video API gives, cut short at
the per-call cap or time budget and continued when asked again, odd bodies answered 4xx."""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import label_studio_sdk.converter.brush as ls_brush
import pytest
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from sam2serve.media import postprocess
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from tests.conftest import encode_image, photos
from tests.helpers_label_studio import media_server

TOKEN = "ls-token-for-tests"
IMAGE_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cup"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Cup"/></RectangleLabels>
  <BrushLabels name="brush" toName="image"><Label value="Cup"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Cup"/></PolygonLabels>
</View>"""
VIDEO_CONFIG = """<View>
  <Video name="video" value="$video" framerate="10"/>
  <VideoRectangle name="box" toName="video"/>
  <Labels name="labels" toName="video"><Label value="Disc"/><Label value="Square"/></Labels>
</View>"""
LS = "/label-studio"


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def coffee_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photos()["coffee"]).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (basic("label-studio", "key-one"), 200),
        (basic("anyone", "key-two"), 200),
        (basic("label-studio", "wrong"), 401),
        ({"Authorization": "Basic !!notbase64"}, 401),
        ({"Authorization": "Bearer key-one"}, 200),
    ],
)
def test_basic_auth(make_client, headers: dict[str, str], status: int) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=["key-one", "key-two"])
    for method, path in (("GET", "/health"), ("POST", "/setup"), ("POST", "/predict")):
        body = {"tasks": [], "label_config": IMAGE_CONFIG} if method == "POST" else None
        r = client.request(method, LS + path, json=body, headers=headers)
        assert r.status_code == status, (path, r.text)
        if status == 401:
            assert "Basic" in r.json()["message"] and "wrong" not in r.text
    # webhooks come without credentials from Label Studio: accepted, ignored
    assert client.post(LS + "/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 200


def test_setup_is_quick_and_loads_no_model(client) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    r = client.post(LS + "/setup", json={"project": "1.1", "schema": IMAGE_CONFIG})
    assert time.perf_counter() - started < 1.0
    assert r.status_code == 200, r.text
    assert r.json()["model_version"].startswith("sam2serve-")
    assert r.json()["controls"]["masks"] == ["brush", "poly"]
    assert client.get("/info").json()["loaded_models"] == []
    bad = client.post(LS + "/setup", json={"schema": "<View><Image"})
    assert bad.status_code == 400 and bad.json()["field"] == "label_config"


def _kp(x: float, y: float, positive: bool = True) -> dict[str, Any]:
    return {
        "type": "keypointlabels",
        "from_name": "kp",
        "to_name": "image",
        "original_width": 600,
        "original_height": 400,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 1, "keypointlabels": ["Cup"]},
    }


def _predict(client, task: dict, regions: list | None, config: str = IMAGE_CONFIG) -> dict:  # type: ignore[no-untyped-def]
    body = {"tasks": [task], "label_config": config, "project": "1.1"}
    if regions is not None:
        body["params"] = {"context": {"result": regions}}
    r = client.post(LS + "/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_interactive_image_masks_equal_segment_image(make_client, coffee_png: bytes) -> None:  # type: ignore[no-untyped-def]
    files = {"/data/upload/1/coffee.png": coffee_png}
    with media_server(files, TOKEN) as media:
        client = make_client(label_studio_url=media.url, label_studio_api_key=TOKEN)
        task = {"id": 11, "data": {"image": "/data/upload/1/coffee.png"}}
        # 600 x 400 image: 50% / 45% -> (300, 180) px; a negative click at (60, 40)
        regions = [_kp(50, 45), _kp(10, 10, positive=False)]
        answer = _predict(client, task, regions)
        [prediction] = answer["results"]
        assert (
            LabelInterface(IMAGE_CONFIG).validate_prediction(prediction, return_errors=True) == []
        )
        by_type = {r["type"]: r for r in prediction["result"]}
        ours = client.post(
            "/sam2/segment_image",
            json={
                "image": {"type": "base64", "value": encode_image(photos()["coffee"])},
                "prompts": [
                    {"points": [{"x": 300, "y": 180}, {"x": 60, "y": 40, "positive": False}]}
                ],
                "format": "rle",
            },
        ).json()["predictions"][0]
        expected = postprocess.rle_to_mask(ours["masks"])
        brush = by_type["brushlabels"]
        assert brush["value"]["brushlabels"] == ["Cup"] and brush["from_name"] == "brush"
        decoded = ls_brush.decode_rle(bytes(brush["value"]["rle"])).reshape(400, 600, 4)
        assert ((decoded[:, :, 3] > 0) == expected).all()
        assert prediction["score"] == pytest.approx(ours["confidence"])
        polygons = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
        want = [p for p in postprocess.mask_to_polygons(expected) if len(p) >= 3]
        got = [[[round(x * 6), round(y * 4)] for x, y in r["value"]["points"]] for r in polygons]
        assert got == want and all(r["value"]["polygonlabels"] == ["Cup"] for r in polygons)
        assert media.requests == [("/data/upload/1/coffee.png", f"Token {TOKEN}")]

        # the second click on the task: no download, no embed (a cache hit)
        misses = client.get("/info").json()["cache"]["misses"]
        again = _predict(client, task, [_kp(20, 70)])
        assert again["results"][0]["result"] and len(media.requests) == 1
        assert client.get("/info").json()["cache"]["misses"] == misses


def test_image_without_context_is_empty_with_a_note(client) -> None:  # type: ignore[no-untyped-def]
    """No SAM 3 weights on this server: no pre-label, a note saying what to do (the image is
    not even fetched: no Label Studio URL is configured, and no error says so)."""
    answer = _predict(client, {"id": 3, "data": {"image": "/data/upload/1/x.png"}}, None)
    assert answer["results"] == [[]]  # no prediction: Label Studio stores none, may ask again
    assert "pre-labelling needs SAM 3" in answer["note"] and "sam3.pt" in answer["note"]


def test_missing_label_studio_url_says_which_setting(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        LS + "/predict",
        json={
            "tasks": [{"id": 4, "data": {"image": "/data/upload/1/x.png"}}],
            "label_config": IMAGE_CONFIG,
            "params": {"context": {"result": [_kp(50, 50)]}},
        },
    )
    assert r.status_code == 503 and "SAM2SERVE_LABEL_STUDIO_URL" in r.json()["message"]


# -- video ---------------------------------------------------------------------------------

FRAMES = 6


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ls-clip") / "clip.mp4"
    return write_mp4(path, synthetic_frames(FRAMES), fps=10).read_bytes()


def _track(region_id: str, label: str, keyframes: list[tuple[int, list[float]]]) -> dict:
    sequence = [
        {"frame": f, "enabled": True, "x": b[0], "y": b[1], "width": b[2], "height": b[3]}
        for f, b in keyframes
    ]
    return {
        "id": region_id,
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "value": {"sequence": sequence, "labels": [label]},
    }


# keyframes in % of 320 x 240 (exact in pixels): the disc on frame 1, the square on frame 2
DISC = (1, [5.0, 30.0, 30.0, 40.0])  # x 16..112, y 72..168
SQUARE = (2, [65.0, 10.0, 17.5, 25.0])  # x 208..264, y 24..84
PIXEL_BOXES = {  # the same, as our API's centre-based boxes: (frame index, object id, box)
    0: (0, 0, {"x": 64, "y": 120, "width": 96, "height": 96}),
    1: (1, 1, {"x": 236, "y": 54, "width": 56, "height": 60}),
}


def _api_tracks(client, clip: bytes) -> dict[int, dict[int, dict | None]]:  # type: ignore[no-untyped-def]
    """frame index -> object id -> box in % (None: empty mask), from our own video API."""
    from sam2serve.label_studio.results import mask_box_pct

    sid = client.post("/sam2/video/sessions", files={"video": ("c.mp4", clip, "video/mp4")}).json()[
        "session_id"
    ]
    for frame, obj, box in PIXEL_BOXES.values():
        body = {"frame_index": frame, "object_id": obj, "box": box}
        assert client.post(f"/sam2/video/sessions/{sid}/prompts", json=body).status_code == 200
    out: dict[int, dict[int, dict | None]] = {}
    with client.stream("POST", f"/sam2/video/sessions/{sid}/propagate", json={}) as s:
        for line in s.iter_lines():
            if line:
                frame = json.loads(line)
                out[frame["frame_index"]] = {
                    o["object_id"]: mask_box_pct(postprocess.rle_to_mask(o["mask"]).astype(bool))
                    for o in frame["objects"]
                }
    client.delete(f"/sam2/video/sessions/{sid}")
    return out


@pytest.mark.video
def test_video_keyframes_become_tracks(make_client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    with media_server({"/data/upload/2/clip.mp4": clip_bytes}, TOKEN) as media:
        client = make_client(
            label_studio_url=media.url,
            label_studio_api_key=TOKEN,
        )
        task = {"id": 21, "data": {"video": "/data/upload/2/clip.mp4"}}
        regions = [_track("disc", "Disc", [DISC]), _track("sq", "Square", [SQUARE])]
        answer = _predict(client, task, regions, VIDEO_CONFIG)
        expected = _api_tracks(client, clip_bytes)
    [prediction] = answer["results"]
    assert LabelInterface(VIDEO_CONFIG).validate_prediction(prediction, return_errors=True) == []
    disc, square = prediction["result"]
    assert (disc["id"], disc["value"]["labels"], square["value"]["labels"]) == (
        "disc",
        ["Disc"],
        ["Square"],
    )
    last = FRAMES - 1
    for obj, region, (first, _) in ((0, disc, DISC), (1, square, SQUARE)):
        sequence = {item["frame"]: item for item in region["value"]["sequence"]}
        assert region["value"]["framesCount"] == FRAMES
        assert sorted(sequence) == list(range(first, last + 2))  # 1-based, every frame
        for frame, item in sequence.items():
            keyframe = (DISC, SQUARE)[obj]
            want = keyframe[1] if frame == keyframe[0] else None
            if want is None:
                box = expected[frame - 1][obj]
                assert box is not None
                want = [box["x"], box["y"], box["width"], box["height"]]
            got = [item["x"], item["y"], item["width"], item["height"]]
            assert got == pytest.approx(want), frame
            assert item["enabled"] and item["time"] == pytest.approx((frame - 1) / 10)
    assert "note" not in prediction


def test_video_task_without_keyframes_is_empty_with_a_note(client) -> None:  # type: ignore[no-untyped-def]
    answer = _predict(
        client, {"id": 5, "data": {"video": "/data/upload/2/c.mp4"}}, None, VIDEO_CONFIG
    )
    assert answer["results"] == [[]] and "keyframe" in answer["note"]


@pytest.mark.video
def test_video_time_budget_cuts_short(make_client, clip_bytes: bytes) -> None:  # type: ignore[no-untyped-def]
    with media_server({"/data/upload/2/clip.mp4": clip_bytes}, TOKEN) as media:
        client = make_client(
            label_studio_url=media.url, label_studio_api_key=TOKEN, label_studio_budget_s=0.001
        )
        tasks = [{"id": 22 + i, "data": {"video": "/data/upload/2/clip.mp4"}} for i in range(2)]
        r = client.post(
            LS + "/predict",
            json={
                "tasks": tasks,
                "label_config": VIDEO_CONFIG,
                "params": {"context": {"result": [_track("disc", "Disc", [DISC])]}},
            },
        )
        assert r.status_code == 200, r.text
        answer = r.json()
    prediction, skipped = answer["results"]
    assert skipped == [] and "not tracked in this call" in answer["note"]
    assert "tracked frames 1-1 of 6: cut short by the time budget" in prediction["note"]
    assert "SAM2SERVE_LABEL_STUDIO_BUDGET_S" in prediction["note"]
    [disc] = prediction["result"]
    assert [item["frame"] for item in disc["value"]["sequence"]] == [1]


@pytest.mark.video
def test_video_asking_again_continues_after_an_accepted_answer(
    make_client, clip_bytes: bytes
) -> None:  # type: ignore[no-untyped-def]
    with media_server({"/data/upload/2/clip.mp4": clip_bytes}, TOKEN) as media:
        client = make_client(
            label_studio_url=media.url, label_studio_api_key=TOKEN, label_studio_video_max_frames=2
        )
        task = {"id": 23, "data": {"video": "/data/upload/2/clip.mp4"}}
        first = _predict(client, task, [_track("disc", "Disc", [DISC])], VIDEO_CONFIG)
        [region] = first["results"][0]["result"]
        note = first["results"][0]["note"]
        assert "tracked frames 1-3 of 6: cut short by the cap of 2 frames per call" in note
        assert region["meta"]["text"] == [note]  # shown with the region in Label Studio
        # the annotator accepts it: every box is a keyframe now; asking again goes on from 3
        accepted = [dict(region, value={**region["value"]})]
        second = _predict(client, task, accepted, VIDEO_CONFIG)
    [prediction] = second["results"]
    assert "tracked frames 3-5 of 6" in prediction["note"]
    sequence = prediction["result"][0]["value"]["sequence"]
    assert [item["frame"] for item in sequence] == [1, 2, 3, 4, 5]
    assert sequence[:3] == region["value"]["sequence"]  # the accepted boxes, as they were


def _clicked(data: object, click: dict | None = None) -> dict:
    context = {"result": [click or _kp(5, 5)]}
    return {"tasks": [{"data": data}], "label_config": IMAGE_CONFIG, "params": {"context": context}}


@pytest.mark.parametrize(
    "body",
    [
        {"tasks": "x"},
        {"tasks": [1]},
        _clicked([1]),
        _clicked({"image": 7}),
        _clicked({"image": "/a"}, {**_kp(5, 5), "original_width": 1e12}),
        {"tasks": [{"data": {"image": "x.png"}}], "label_config": 5},
        {"tasks": [{}], "label_config": "<View"},
        [1, 2],
    ],
)
def test_bad_predict_bodies_are_4xx(client, body: object) -> None:  # type: ignore[no-untyped-def]
    r = client.post(LS + "/predict", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["message"]
