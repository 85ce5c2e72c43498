"""HTTP behaviour on the tiny random-weight model: shapes, prompt forms, formats, ops routes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from sam2serve.media.postprocess import rle_to_mask
from tests.conftest import encode_image, photos

RGB = photos()["coffee"]  # 400 x 600
H, W = RGB.shape[:2]
IMAGE = {"type": "base64", "value": encode_image(RGB)}
POINT = {"points": [{"x": 300, "y": 200, "positive": True}]}
BOX = {"box": {"x": 300, "y": 200, "width": 200, "height": 100}}


def _embed(client, **extra) -> str:  # type: ignore[no-untyped-def]
    r = client.post("/sam2/embed_image", json={"image": IMAGE, **extra})
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


def _segment(client, **body):  # type: ignore[no-untyped-def]
    r = client.post("/sam2/segment_image", json=body)
    assert r.status_code == 200, r.text
    return r


def test_embed_returns_id_and_time_and_second_embed_is_a_hit(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/sam2/embed_image", json={"image": IMAGE, "model_id": "x", "id": "y"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"image_id", "time"} and body["time"] >= 0
    assert _embed(client) == body["image_id"]
    cache = client.get("/info").json()["cache"]
    assert (cache["misses"], cache["hits"], cache["entries"]) == (1, 1, 1)


def test_segment_by_image_id_only(client) -> None:  # type: ignore[no-untyped-def]
    image_id = _embed(client, image_id="photo-1")
    assert image_id == "photo-1"
    body = _segment(client, image_id="photo-1", prompts={"prompts": [POINT]}).json()
    assert set(body) == {"predictions", "time"}
    (pred,) = body["predictions"]
    assert set(pred) == {"masks", "confidence", "format"} and pred["format"] == "polygon"
    for polygon in pred["masks"]:
        for x, y in polygon:
            assert isinstance(x, int) and 0 <= x < W and 0 <= y < H


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ({"prompts": [POINT, BOX]}, 2),  # nested, as Roboflow clients send
        ([POINT, BOX, POINT], 3),  # flat list
        (POINT, 1),  # one prompt object
        ({"prompts": []}, 1),  # no prompts: one prediction, as the peer does
        (None, 1),
        ({"prompts": [{"points": [{"x": 1, "y": 2, "positive": False}] * 3}, BOX]}, 2),
    ],
)
def test_prompt_forms(client, prompts, expected: int) -> None:  # type: ignore[no-untyped-def]
    body = {"image": IMAGE}
    if prompts is not None:
        body["prompts"] = prompts
    preds = _segment(client, **body).json()["predictions"]
    assert len(preds) == expected


def test_prompts_keep_request_order(client) -> None:  # type: ignore[no-untyped-def]
    image_id = _embed(client)
    both = _segment(client, image_id=image_id, prompts=[POINT, BOX], format="rle").json()
    alone_box = _segment(client, image_id=image_id, prompts=[BOX], format="rle").json()
    # a box-only prompt pads nothing when alone; in a batch with a 1-point prompt it is
    # already 2 tokens wide, so its result must be identical either way
    assert both["predictions"][1]["masks"] == alone_box["predictions"][0]["masks"]
    assert both["predictions"][1]["confidence"] == pytest.approx(
        alone_box["predictions"][0]["confidence"], abs=1e-5
    )


def test_formats_agree(client) -> None:  # type: ignore[no-untyped-def]
    image_id = _embed(client)
    prompts = [POINT, BOX]
    binary = _segment(client, image_id=image_id, prompts=prompts, format="binary")
    assert binary.headers["content-type"] == "application/octet-stream"
    npz = np.load(io.BytesIO(binary.content), allow_pickle=False)
    assert set(npz.files) == {"masks", "low_res_masks"}
    assert npz["masks"].shape == (2, H, W) and npz["masks"].dtype == np.float32
    assert npz["low_res_masks"].shape == (2, 64, 64)
    rle = _segment(client, image_id=image_id, prompts=prompts, format="rle").json()
    for pred, logits in zip(rle["predictions"], npz["masks"], strict=True):
        assert pred["format"] == "rle" and pred["masks"]["size"] == [H, W]
        np.testing.assert_array_equal(rle_to_mask(pred["masks"]), logits > 0)
    polys = _segment(client, image_id=image_id, prompts=prompts).json()
    conf = [p["confidence"] for p in polys["predictions"]]
    assert conf == pytest.approx([p["confidence"] for p in rle["predictions"]])


def test_multimask_false_and_holes_extension(client) -> None:  # type: ignore[no-untyped-def]
    image_id = _embed(client)
    r = _segment(client, image_id=image_id, prompts=[POINT], multimask_output=False)
    assert len(r.json()["predictions"]) == 1
    holes = _segment(client, image_id=image_id, prompts=[POINT], polygon_holes=True).json()
    outer = _segment(client, image_id=image_id, prompts=[POINT]).json()
    assert len(holes["predictions"][0]["masks"]) >= len(outer["predictions"][0]["masks"])
    schema = client.get("/openapi.json").json()
    assert "polygon_holes" in str(schema)


def test_logits_cache_refinement_equals_explicit_mask_input(client) -> None:  # type: ignore[no-untyped-def]
    image_id = _embed(client)
    first = {"prompts": [POINT]}
    _segment(client, image_id=image_id, prompts=first, save_logits_to_cache=True)
    low = np.load(
        io.BytesIO(_segment(client, image_id=image_id, prompts=first, format="binary").content)
    )["low_res_masks"]
    second = {"prompts": [{"points": [*POINT["points"], {"x": 100, "y": 50, "positive": False}]}]}
    loaded = _segment(
        client, image_id=image_id, prompts=second, load_logits_from_cache=True, format="rle"
    ).json()
    explicit = _segment(
        client, image_id=image_id, prompts=second, mask_input=low.tolist(), format="rle"
    ).json()
    plain = _segment(client, image_id=image_id, prompts=second, format="rle").json()
    assert loaded == {**explicit, "time": loaded["time"]}
    assert loaded["predictions"] != plain["predictions"]


def test_aliases_and_versions(make_client, tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    client = make_client()
    r = client.post("/sam2/embed_image", json={"image": IMAGE, "sam2_version_id": "hiera_nope"})
    assert r.status_code == 400
    assert "hiera_tiny" in r.json()["message"] and "sam2.1_hiera_large" in r.json()["message"]
    info = client.get("/info").json()
    assert info["aliases"]["hiera_b_plus"] == "sam2.1_hiera_base_plus"
    sam2_family = make_client(alias_family="sam2").get("/info").json()
    assert sam2_family["aliases"]["hiera_tiny"] == "sam2_hiera_tiny"


def test_missing_weights_is_503_naming_file_dir_and_command(client, tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/sam2/embed_image", json={"image": IMAGE, "sam2_version_id": "hiera_large"})
    assert r.status_code == 503
    msg = r.json()["message"]
    assert "sam2.1_hiera_large.pt" in msg and str(tiny_weights_dir) in msg
    assert "sam2serve download sam2.1_hiera_large" in msg


def test_ops_routes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    _embed(client)
    info = client.get("/info").json()
    assert info["loaded_models"] == ["test_tiny"] and info["device"] == "cpu"
    assert info["runtimes"]["test_tiny"]["runtime"] in ("OpenVinoRuntime", "TorchRuntime")
    assert info["rss_bytes"] > 100 * 2**20
    metrics = client.get("/metrics").text
    assert "sam2serve_requests_total" in metrics and "sam2serve_cache_bytes" in metrics
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/sam2/embed_image", "/sam2/segment_image"} <= set(paths)
    missing = client.get("/nope")
    assert missing.status_code == 404 and "message" in missing.json()


def test_embed_from_url_on_an_allowed_local_host(make_client) -> None:  # type: ignore[no-untyped-def]
    import base64
    import http.server
    import threading

    png = base64.b64decode(IMAGE["value"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(png)))
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/photo.png"
        strict = make_client()
        refused = strict.post("/sam2/embed_image", json={"image": {"type": "url", "value": url}})
        assert refused.status_code == 400
        lenient = make_client(url_allow_http=True, url_allow_private=True)
        r = lenient.post("/sam2/embed_image", json={"image": {"type": "url", "value": url}})
        assert r.status_code == 200, r.text
        assert r.json()["image_id"] == _embed(lenient)  # same pixels, same content id
    finally:
        server.shutdown()


def test_readyz_with_preload_becomes_ready(make_client) -> None:  # type: ignore[no-untyped-def]
    import time

    client = make_client(preload=True)
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get("/info").json()["loaded_models"] == ["test_tiny"]
