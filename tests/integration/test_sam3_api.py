"""The /sam3 routes on SAM 3's tiny architecture with seeded random weights (the real
runtime, no fakes): every answer equals the runtime's own pre-threshold output put through
the documented selection (threshold, best first, NMS, caps), read back from the wire."""

from __future__ import annotations

import numpy as np
import pytest

from sam2serve.media.postprocess import polygons_to_mask, rle_to_mask
from sam2serve.testing import SAM3_TEST_MODEL_ID, TEST_MODEL_ID
from tests.conftest import encode_image, photos

RGB = photos()["coffee"]  # 400 x 600
H, W = RGB.shape[:2]
IMAGE = {"type": "base64", "value": encode_image(RGB)}
NO_BOXES = np.zeros((0, 4), dtype=np.float32)
NO_LABELS = np.zeros((0,), dtype=bool)


@pytest.fixture(scope="module")
def client(make_sam3_client):  # type: ignore[no-untyped-def]
    return make_sam3_client()


@pytest.fixture(scope="module")
def runtime(client):  # type: ignore[no-untyped-def]
    """The app's own loaded SAM 3 runtime (stateless: safe to call from the test thread)."""
    services = client.app.state.services
    spec = services.images.models.resolve_sam3(SAM3_TEST_MODEL_ID)
    return client.portal.call(services.images.pool.get, spec)


@pytest.fixture(scope="module")
def features(runtime):  # type: ignore[no-untyped-def]
    return runtime.embed(RGB)


def _concept(client, **body):  # type: ignore[no-untyped-def]
    r = client.post("/sam3/concept_segment", json={"image": IMAGE, "format": "rle", **body})
    assert r.status_code == 200, r.text
    return r.json()


def _inside_band(scores: np.ndarray) -> float:
    """A threshold some but not all of `scores` pass (random weights score in a band)."""
    ordered = np.sort(scores)[::-1]
    assert ordered[0] > ordered[-1], "all scores equal: the test would be vacuous"
    return float((ordered[2] + ordered[3]) / 2)  # the best three pass


def _expected(runtime, features, out, threshold):  # type: ignore[no-untyped-def]
    keep = np.flatnonzero(out.scores > threshold)
    keep = keep[np.argsort(-out.scores[keep], kind="stable")]
    return out.scores[keep], runtime.masks(features, out, keep)


def _answered(result: dict) -> tuple[np.ndarray, np.ndarray]:
    preds = result["predictions"]
    scores = np.array([p["confidence"] for p in preds], dtype=np.float32)
    masks = np.array([rle_to_mask(p["masks"]) for p in preds], dtype=bool).reshape(-1, H, W)
    return scores, masks


def test_text_prompt_equals_the_runtime(client, runtime, features) -> None:  # type: ignore[no-untyped-def]
    (text,) = runtime.encode_text(["cup"])
    out = runtime.concept(features, text, NO_BOXES, NO_LABELS)
    threshold = _inside_band(out.scores)
    want_scores, want_masks = _expected(runtime, features, out, threshold)
    assert len(want_scores) == 3 and want_masks.any()  # not vacuous: 3 of Q pass
    body = _concept(client, prompts=[{"type": "text", "text": "cup"}], output_prob_thresh=threshold)
    (result,) = body["prompt_results"]
    assert result["echo"] == {"prompt_index": 0, "type": "text", "text": "cup", "num_boxes": 0}
    assert result["found"] == 3 and result["note"] is None
    scores, masks = _answered(result)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(masks, want_masks)


def test_several_prompts_boxes_and_per_prompt_thresholds(client, runtime, features) -> None:  # type: ignore[no-untyped-def]
    text, visual = runtime.encode_text(["red saucer", "visual"])
    boxes = np.array([[100, 80, 260, 200], [300, 50, 420, 140]], dtype=np.float32)
    labels = np.array([True, False])
    outs = [
        runtime.concept(features, text, NO_BOXES, NO_LABELS),
        runtime.concept(features, visual, boxes, labels),  # boxes only: Meta's "visual"
        runtime.concept(features, text, boxes[:1], labels[:1]),  # both
    ]
    thresholds = [_inside_band(o.scores) for o in outs]
    prompts = [
        {"type": "text", "text": "red saucer", "output_prob_thresh": thresholds[0]},
        {
            "type": "visual",
            "boxes": [
                {"x": 100, "y": 80, "width": 160, "height": 120},  # top-left XYWH
                {"x0": 300, "y0": 50, "x1": 420, "y1": 140},
            ],
            "box_labels": [1, 0],
            "output_prob_thresh": thresholds[1],
        },
        {
            "text": "red saucer",
            "boxes": [{"x": 100, "y": 80, "width": 160, "height": 120}],
            "output_prob_thresh": thresholds[2],
        },
    ]
    body = _concept(client, prompts=prompts, output_prob_thresh=0.99)
    echoes = [r["echo"] for r in body["prompt_results"]]
    assert [(e["type"], e["text"], e["num_boxes"]) for e in echoes] == [
        ("text", "red saucer", 0),
        ("visual", None, 2),
        ("visual", "red saucer", 1),
    ]
    for result, out, threshold in zip(body["prompt_results"], outs, thresholds, strict=True):
        want_scores, want_masks = _expected(runtime, features, out, threshold)
        scores, masks = _answered(result)
        np.testing.assert_array_equal(scores, want_scores)
        np.testing.assert_array_equal(masks, want_masks)
    # the request-level threshold applies where a prompt has none: nothing is over 0.99
    body = _concept(client, prompts=[{"text": "red saucer"}], output_prob_thresh=0.99)
    assert body["prompt_results"][0]["predictions"] == []


def test_cross_prompt_nms_drops_duplicates_of_other_prompts(client, runtime, features) -> None:  # type: ignore[no-untyped-def]
    (text,) = runtime.encode_text(["cup"])
    threshold = _inside_band(runtime.concept(features, text, NO_BOXES, NO_LABELS).scores)
    prompts = [{"text": "cup"}, {"text": "cup"}]
    plain = _concept(client, prompts=prompts, output_prob_thresh=threshold)
    assert [len(r["predictions"]) for r in plain["prompt_results"]] == [3, 3]
    nms = _concept(client, prompts=prompts, output_prob_thresh=threshold, nms_iou_threshold=0.5)
    first, second = nms["prompt_results"]
    # the same phrase twice: identical masks (IoU 1), so the second prompt's all go
    assert second["predictions"] == [] and second["found"] == 0
    kept = _answered(first)[1]
    for i in range(len(kept)):  # and within the first, no two kept overlap by > 0.5
        for j in range(i):
            inter = np.count_nonzero(kept[i] & kept[j])
            union = np.count_nonzero(kept[i] | kept[j])
            assert union == 0 or inter / union <= 0.5


def test_polygon_format_fills_back_to_the_masks(client) -> None:  # type: ignore[no-untyped-def]
    rle = _concept(client, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    poly = client.post(
        "/sam3/concept_segment",
        json={"image": IMAGE, "prompts": [{"text": "cup"}], "output_prob_thresh": 0.0},
    ).json()
    (r_res,), (p_res,) = rle["prompt_results"], poly["prompt_results"]
    assert len(p_res["predictions"]) == len(r_res["predictions"]) > 0
    for p, r in zip(p_res["predictions"], r_res["predictions"], strict=True):
        assert p["format"] == "polygon" and p["confidence"] == r["confidence"]
        mask = rle_to_mask(r["masks"])
        filled = polygons_to_mask(p["masks"], H, W)
        assert filled.sum() >= mask.sum() * 0.9  # outer boundaries: holes filled
        assert not (mask & ~filled).sum() > mask.sum() * 0.05


def test_budget_says_how_many_images_fit_before_any_embed(make_sam3_client, runtime) -> None:  # type: ignore[no-untyped-def]
    fresh = make_sam3_client()
    services = fresh.app.state.services
    spec = services.images.models.resolve_sam3(None)
    fresh.portal.call(services.images.pool.get, spec)  # loaded, nothing embedded yet
    assert services.images.store.local.bytes_per_image == {}
    info = fresh.get("/info").json()
    fit = info["cache"]["per_model"][SAM3_TEST_MODEL_ID]  # as the loaded runtime declares
    size = fit["bytes_per_image"]
    assert size == runtime.feature_nbytes > 0
    assert fit["images"] == info["cache"]["max_bytes"] // size


def test_embed_then_segment_by_id_and_phrase_cache(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/sam3/embed_image", json={"image": IMAGE, "image_id": "coffee-3"})
    assert r.status_code == 200, r.text
    assert r.json()["image_id"] == "coffee-3"
    sam3 = client.app.state.services.sam3
    misses = sam3.texts.misses
    by_id = client.post(
        "/sam3/concept_segment",
        json={"image_id": "coffee-3", "prompts": [{"text": "mug"}], "output_prob_thresh": 0.0},
    ).json()
    with_image = _concept(
        client, prompts=[{"text": "mug"}], output_prob_thresh=0.0, format="polygon"
    )
    assert by_id["prompt_results"] == with_image["prompt_results"]
    assert sam3.texts.misses == misses + 1  # "mug" encoded once, then reused
    info = client.get("/info").json()
    assert SAM3_TEST_MODEL_ID in info["sam3"]["models"]
    assert info["sam3"]["limits"]["max_prompts"] == 16
    assert info["sam3"]["text_cache"]["entries"] >= 1
    per_model = info["cache"]["per_model"][SAM3_TEST_MODEL_ID]  # measured on the embed
    sam3_bytes = client.app.state.services.images.store.local.bytes_per_image[SAM3_TEST_MODEL_ID]
    assert per_model == {
        "bytes_per_image": sam3_bytes,
        "images": info["cache"]["max_bytes"] // sam3_bytes,
    }
    families = {m["id"]: m["family"] for m in info["models"]}
    assert families[SAM3_TEST_MODEL_ID] == "sam3" and families[TEST_MODEL_ID] == "sam2"


def test_concurrent_requests_encode_a_new_phrase_once(
    client, runtime, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Requests that arrive together with the same new phrase share one text-encoder call
    (single-flight), and each gets the same answer as a request alone."""
    import threading
    import time

    calls: list[list[str]] = []
    encode = runtime.encode_text

    def slow_encode(phrases: list[str]):  # type: ignore[no-untyped-def]
        calls.append(list(phrases))
        time.sleep(0.5)  # keeps the first call in flight while the others arrive
        return encode(phrases)

    monkeypatch.setattr(runtime, "encode_text", slow_encode)
    assert (
        client.post("/sam3/embed_image", json={"image": IMAGE, "image_id": "sf"}).status_code == 200
    )
    body = {"image_id": "sf", "prompts": [{"text": "teapot"}], "output_prob_thresh": 0.0}
    answers: list[dict] = []

    def ask() -> None:
        r = client.post("/sam3/concept_segment", json={**body, "format": "rle"})
        assert r.status_code == 200, r.text
        answers.append(r.json()["prompt_results"])

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [["teapot"]]  # one encoder call for three requests
    assert len(answers) == 3 and answers[0] == answers[1] == answers[2]
    assert client.app.state.services.sam3.texts.describe()["encoding"] == 0  # nothing left


def test_image_ids_never_cross_families(client) -> None:  # type: ignore[no-untyped-def]
    assert (
        client.post("/sam2/embed_image", json={"image": IMAGE, "image_id": "s2"}).status_code == 200
    )
    r = client.post("/sam3/concept_segment", json={"image_id": "s2", "prompts": [{"text": "a"}]})
    assert r.status_code == 404 and r.json()["field"] == "image_id"
    assert (
        client.post("/sam3/embed_image", json={"image": IMAGE, "image_id": "s3"}).status_code == 200
    )
    point = {"points": [{"x": 10, "y": 10}]}
    r = client.post("/sam2/segment_image", json={"image_id": "s3", "prompts": [point]})
    assert r.status_code == 404 and r.json()["field"] == "image_id"


def test_api_keys_keep_their_sam3_images_apart(make_sam3_client) -> None:  # type: ignore[no-untyped-def]
    keyed = make_sam3_client(api_keys=["key-one", "key-two"])
    one, two = ({"Authorization": f"Bearer key-{k}"} for k in ("one", "two"))
    body = {"image": IMAGE, "image_id": "mine"}
    assert keyed.post("/sam3/embed_image", json=body, headers=one).status_code == 200
    ask = {"image_id": "mine", "prompts": [{"text": "cup"}]}
    assert keyed.post("/sam3/concept_segment", json=ask, headers=one).status_code == 200
    assert keyed.post("/sam3/concept_segment", json=ask, headers=two).status_code == 404
    assert keyed.post("/sam3/concept_segment", json=ask).status_code == 401


def test_instance_cap_and_mask_budget_say_so(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sam2serve.sam3.config import Sam3Settings

    services = client.app.state.services
    monkeypatch.setattr(services.sam3, "settings", Sam3Settings(max_instances_per_prompt=2))
    images = services.images
    prompts = [{"text": "cup"}, {"text": "bowl"}]
    everything = _concept(client, prompts=prompts, output_prob_thresh=0.0)["prompt_results"]
    for result in everything:  # the per-prompt cap alone: the best 2 of each, noted
        assert len(result["predictions"]) == 2 and result["found"] > 2
        assert "MAX_INSTANCES_PER_PROMPT" in result["note"]
    monkeypatch.setattr(services.sam3, "settings", Sam3Settings())
    everything = _concept(client, prompts=prompts, output_prob_thresh=0.0)["prompt_results"]
    best3 = sorted((p["confidence"] for r in everything for p in r["predictions"]), reverse=True)
    monkeypatch.setattr(
        images, "settings", images.settings.model_copy(update={"max_mask_pixels": 3 * H * W})
    )
    budgeted = _concept(client, prompts=prompts, output_prob_thresh=0.0)["prompt_results"]
    kept = sorted((p["confidence"] for r in budgeted for p in r["predictions"]), reverse=True)
    assert kept == best3[:3]  # the budget: 3 masks of H x W, the best of the request
    for result in budgeted:
        assert result["found"] > len(result["predictions"])
        assert "SAM2SERVE_MAX_MASK_PIXELS" in result["note"]
    monkeypatch.setattr(
        images, "settings", images.settings.model_copy(update={"max_mask_pixels": H * W - 1})
    )
    r = client.post("/sam3/concept_segment", json={"image": IMAGE, "prompts": [{"text": "a"}]})
    assert r.status_code == 413 and "SAM2SERVE_MAX_MASK_PIXELS" in r.json()["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model_id": TEST_MODEL_ID}, 400, "model_id"),  # a SAM 2 id on a /sam3 route
        ({"model_id": "sam3"}, 503, None),  # the official SAM 3: its gated file is absent
        ({"prompts": [{"text": "x" * 201}]}, 422, "prompts[0]"),
        ({"prompts": [{"text": "a"}] * 17}, 422, "body"),
    ],
)
def test_refusals(client, body, status, field) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/sam3/concept_segment", json={"image": IMAGE, "prompts": [{"text": "a"}], **body}
    )
    assert r.status_code == status, r.text
    if field:
        assert r.json()["field"].startswith(field)
    if status == 503:
        assert "sam3.pt" in r.json()["message"] and "never downloads" in r.json()["message"]


def test_visual_segment_equals_the_instance_predictor(client, runtime, features) -> None:  # type: ignore[no-untyped-def]
    prompts = [
        {"points": [{"x": 300, "y": 200, "positive": True}]},
        {"box": {"x": 300, "y": 200, "width": 200, "height": 150}},  # SAM 2's centre box
    ]
    r = client.post(
        "/sam3/visual_segment",
        json={"image": IMAGE, "prompts": {"prompts": prompts}, "format": "rle"},
    )
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    calls = [
        (np.array([[300, 200]]), np.array([1]), None),
        (None, None, np.array([200, 125, 400, 275])),
    ]
    for pred, (pts, labels, box) in zip(preds, calls, strict=True):
        masks, scores, _ = runtime.interactive_full(features, pts, labels, box, None, True)
        best = int(np.argmax(scores))
        np.testing.assert_array_equal(rle_to_mask(pred["masks"]), masks[best])
        assert pred["confidence"] == pytest.approx(float(scores[best]), abs=1e-6)


def test_openapi_documents_the_routes_with_working_examples(client) -> None:  # type: ignore[no-untyped-def]
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in (
        "Sam3EmbedRequest",
        "ConceptSegmentRequest",
        "VisualSegmentRequest",
        "Sam3EverythingRequest",
        "Sam3Prompt",
        "BoxXYWH",
        "BoxXYXY",
    ):
        assert schemas[name].get("examples"), name
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    for path in SAM3_PATHS:
        op = doc["paths"][path]["post"]
        media = op["requestBody"]["content"]["application/json"]
        assert "413" in op["responses"] and "422" in op["responses"]
        bodies = [media["example"], *(e["value"] for e in media.get("examples", {}).values())]
        for body in bodies:  # every example works as it stands
            r = client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
    concept = doc["paths"]["/sam3/concept_segment"]["post"]["requestBody"]["content"]
    assert set(concept["application/json"]["examples"]) == {"text", "exemplars", "nms"}


SAM3_PATHS = (
    "/sam3/embed_image",
    "/sam3/concept_segment",
    "/sam3/visual_segment",
    "/sam3/segment_everything",
)


@pytest.mark.slow
def test_shared_tier_gives_another_replica_the_features(make_sam3_client) -> None:  # type: ignore[no-untyped-def]
    from tests.helpers_redis import RedisProcess

    proc = RedisProcess()
    proc.start()
    try:
        shared = {"redis_url": proc.url, "redis_retry_s": 0.5}
        a = make_sam3_client(replica_name="A", **shared)
        b = make_sam3_client(replica_name="B", **shared)
        r = a.post("/sam3/embed_image", json={"image": IMAGE, "image_id": "shared-3"})
        assert r.status_code == 200, r.text
        body = {"image_id": "shared-3", "prompts": [{"text": "cup"}], "output_prob_thresh": 0.0}
        want = a.post("/sam3/concept_segment", json=body).json()
        got = b.post("/sam3/concept_segment", json=body)
        assert got.status_code == 200, got.text
        assert got.json()["prompt_results"] == want["prompt_results"]
        assert b.get("/info").json()["shared_tier"]["counts"]["features.hit"] == 1
        # B never embedded it: the SAM 2 route on B does not know the id
        point = {"points": [{"x": 10, "y": 10}]}
        r = b.post("/sam2/segment_image", json={"image_id": "shared-3", "prompts": [point]})
        assert r.status_code == 404
    finally:
        proc.close()


def test_visual_segment_forms_and_refinement(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/sam3/visual_segment", json={"image": IMAGE})  # no prompts: one mask
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1
    point = {"points": [{"x": 300, "y": 200, "positive": True}]}
    both = {"points": [*point["points"], {"x": 100, "y": 100, "positive": False}]}
    body = {"image": IMAGE, "image_id": "coffee-v", "prompts": [point], "format": "rle"}
    first = client.post("/sam3/visual_segment", json={**body, "save_logits_to_cache": True})
    assert first.status_code == 200, first.text
    refined = client.post(
        "/sam3/visual_segment",
        json={"image_id": "coffee-v", "prompts": [both], "load_logits_from_cache": True},
    )
    plain = client.post("/sam3/visual_segment", json={"image_id": "coffee-v", "prompts": [both]})
    assert refined.status_code == plain.status_code == 200, refined.text
    # the saved logits of the one-point prompt seed the two-point one: a different answer
    assert refined.json()["predictions"] != plain.json()["predictions"]
    binary = client.post("/sam3/visual_segment", json={**body, "format": "binary"})
    assert binary.headers["content-type"] == "application/octet-stream"


def test_visual_segment_saved_logits_for_some_prompts_only(client) -> None:  # type: ignore[no-untyped-def]
    point = {"points": [{"x": 300, "y": 200, "positive": True}]}
    box = {"box": {"x": 300, "y": 200, "width": 200, "height": 150}}
    base = {"image_id": "coffee-w", "format": "rle"}
    r = client.post(
        "/sam3/visual_segment",
        json={**base, "image": IMAGE, "prompts": [point], "save_logits_to_cache": True},
    )
    assert r.status_code == 200, r.text
    # [point, box]: the saved set {point} is a strict subset, so only the point's row gets
    # its saved logits; each row must answer as it would on its own
    both = client.post(
        "/sam3/visual_segment",
        json={**base, "prompts": [point, box], "load_logits_from_cache": True},
    )
    assert both.status_code == 200, both.text
    seeded = client.post(
        "/sam3/visual_segment",
        json={**base, "prompts": [point], "mask_input": _saved_logits(client, point)},
    ).json()["predictions"][0]
    alone = client.post("/sam3/visual_segment", json={**base, "prompts": [box]}).json()
    assert both.json()["predictions"] == [seeded, alone["predictions"][0]]


def _saved_logits(client, prompt) -> list:  # type: ignore[no-untyped-def]
    """The low-res logits visual_segment answers for `prompt` (format=binary), as a client
    would send them back as mask_input."""
    import io

    r = client.post(
        "/sam3/visual_segment",
        json={"image_id": "coffee-w", "prompts": [prompt], "format": "binary"},
    )
    with np.load(io.BytesIO(r.content)) as npz:
        return npz["low_res_masks"].tolist()


@pytest.mark.parametrize(
    "prompt",
    [
        {"boxes": [{"x": 10, "y": 10, "width": 0, "height": 0}]},  # a zero-area exemplar
        {"boxes": [{"x0": -500, "y0": -500, "x1": 5000, "y1": 5000}]},  # beyond the image
        {
            "text": "a",
            "boxes": [{"x": 10, "y": 10, "width": 5, "height": 5}],
            "box_labels": [False],
        },
        {"text": "ünïcode ✓ 漢字"},
        {"text": "x" * 200},  # at the phrase limit: the tokenizer truncates
    ],
)
def test_odd_but_valid_prompts_are_answered(client, prompt) -> None:  # type: ignore[no-untyped-def]
    body = {"image": IMAGE, "prompts": [prompt], "output_prob_thresh": 0.3, "nms_iou_threshold": 0}
    r = client.post("/sam3/concept_segment", json=body)
    assert r.status_code == 200, r.text
