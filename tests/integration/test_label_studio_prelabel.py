"""SAM 3 pre-labels through the Label Studio backend on SAM 3's tiny architecture (seeded
random weights, the real runtime): an image task without context answers every instance
/sam3/concept_segment finds for the config's labels (as phrases, or the configured
mapping), brush RLE decoded by label-studio-sdk, polygons and boxes from the same masks,
labels and scores equal; the per-prompt cap and the prompts-per-request cap; the notes."""

from __future__ import annotations

from typing import Any

import label_studio_sdk.converter.brush as ls_brush
import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from sam2serve.label_studio.results import mask_box_pct
from sam2serve.media.postprocess import mask_to_polygons, rle_to_mask
from sam2serve.testing import SAM3_TEST_MODEL_ID
from tests.conftest import encode_image, photos
from tests.helpers_sam3 import threshold_in_band

RGB = photos()["coffee"]  # 400 x 600
H, W = RGB.shape[:2]
DATA_URI = "data:image/png;base64," + encode_image(RGB)
BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Cup"/><Label value="Saucer"/></BrushLabels>
</View>"""
SHAPES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image"><Label value="Cup"/></PolygonLabels>
  <RectangleLabels name="rect" toName="image"><Label value="Cup"/></RectangleLabels>
</View>"""
LS = "/label-studio"
NO_BOXES = np.zeros((0, 4), dtype=np.float32)
NO_LABELS = np.zeros((0,), dtype=bool)


@pytest.fixture(scope="module")
def runtime(make_sam3_client):  # type: ignore[no-untyped-def]
    client = make_sam3_client()
    services = client.app.state.services
    spec = services.images.models.resolve_sam3(SAM3_TEST_MODEL_ID)
    return client.portal.call(services.images.pool.get, spec)


def band_threshold(runtime, phrases: list[str], at_least: int = 1, at_most: int = 4) -> float:  # type: ignore[no-untyped-def]
    """A threshold `at_least` to `at_most` (not all) instances of every phrase pass."""
    features = runtime.embed(RGB)
    texts = runtime.encode_text(phrases)
    scores = [runtime.concept(features, t, NO_BOXES, NO_LABELS).scores for t in texts]
    return threshold_in_band(scores, at_least, at_most)


def predict(client, config: str, task_id: int = 1) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = {"tasks": [{"id": task_id, "data": {"image": DATA_URI}}], "label_config": config}
    r = client.post(LS + "/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def concept(client, phrases: list[str], threshold: float) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    r = client.post(
        "/sam3/concept_segment",
        json={
            "image": {"type": "base64", "value": encode_image(RGB)},
            "format": "rle",
            "output_prob_thresh": threshold,
            "prompts": [{"type": "text", "text": p} for p in phrases],
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["prompt_results"]


def expected(results: list[dict[str, Any]], labels: list[str]) -> list[tuple[str, float, Any]]:
    """(label, score, mask) of every instance concept_segment answered, in its order."""
    return [
        (label, p["confidence"], rle_to_mask(p["masks"]))
        for label, result in zip(labels, results, strict=True)
        for p in result["predictions"]
    ]


def brush_masks(prediction: dict[str, Any]) -> list[tuple[str, float, Any]]:
    out = []
    for item in prediction["result"]:
        assert item["type"] == "brushlabels" and item["from_name"] == "brush"
        rgba = ls_brush.decode_rle(bytes(item["value"]["rle"])).reshape(H, W, 4)
        out.append((item["value"]["brushlabels"][0], item["score"], rgba[:, :, 3] > 0))
    return out


def same(got: list[tuple[str, float, Any]], want: list[tuple[str, float, Any]]) -> None:
    assert [(label, score) for label, score, _ in got] == [(la, s) for la, s, _ in want]
    for (_, _, mask), (_, _, wanted) in zip(got, want, strict=True):
        np.testing.assert_array_equal(mask, wanted)


@pytest.mark.parametrize(
    ("phrases", "mapping"),
    # the mapping swaps the phrases: each label gets the other phrase's instances
    [(["cup", "saucer"], None), (["saucer", "cup"], {"Cup": "saucer", "Saucer": "cup"})],
    ids=["labels-lower-cased", "mapping"],
)
def test_prelabel_brush_equals_concept_segment(make_sam3_client, runtime, phrases, mapping) -> None:  # type: ignore[no-untyped-def]
    threshold = band_threshold(runtime, phrases)
    settings: dict[str, Any] = {"label_studio_prelabel_threshold": threshold}
    if mapping:
        settings["label_studio_phrases"] = mapping
    client = make_sam3_client(**settings)
    want = expected(concept(client, phrases, threshold), ["Cup", "Saucer"])
    assert {label for label, _, _ in want} == {"Cup", "Saucer"}  # not vacuous: both found
    answer = predict(client, BRUSH_CONFIG)
    [prediction] = answer["results"]
    assert LabelInterface(BRUSH_CONFIG).validate_prediction(prediction, return_errors=True) == []
    same(brush_masks(prediction), want)
    assert prediction["score"] == pytest.approx(np.mean([s for _, s, _ in want]))
    assert "note" not in answer

    # the second pre-label of the task: the image is not embedded again
    misses = client.get("/info").json()["cache"]["misses"]
    again = predict(client, BRUSH_CONFIG)
    same(brush_masks(again["results"][0]), want)
    assert client.get("/info").json()["cache"]["misses"] == misses


def test_prelabel_polygons_and_boxes(make_sam3_client, runtime) -> None:  # type: ignore[no-untyped-def]
    threshold = band_threshold(runtime, ["cup"])
    client = make_sam3_client(label_studio_prelabel_threshold=threshold)
    want = expected(concept(client, ["cup"], threshold), ["Cup"])
    [prediction] = predict(client, SHAPES_CONFIG)["results"]
    assert LabelInterface(SHAPES_CONFIG).validate_prediction(prediction, return_errors=True) == []
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    assert [(b["value"]["rectanglelabels"], b["score"]) for b in boxes] == [
        (["Cup"], s) for _, s, _ in want
    ]
    assert [{k: b["value"][k] for k in ("x", "y", "width", "height")} for b in boxes] == [
        mask_box_pct(mask) for _, _, mask in want
    ]
    polygons = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
    wanted = [p for _, _, mask in want for p in mask_to_polygons(mask) if len(p) >= 3]
    got = [[[round(x * 6), round(y * 4)] for x, y in r["value"]["points"]] for r in polygons]
    assert got == wanted and all(r["value"]["polygonlabels"] == ["Cup"] for r in polygons)


def test_prelabel_caps_say_so(make_sam3_client, runtime) -> None:  # type: ignore[no-untyped-def]
    """One instance per phrase (the cap is noted), one phrase per SAM 3 request (chunked)."""
    threshold = band_threshold(runtime, ["cup", "saucer"], at_least=2, at_most=40)
    client = make_sam3_client(
        sam3={"max_instances_per_prompt": 1, "max_prompts": 1},
        label_studio_prelabel_threshold=threshold,
    )
    full = make_sam3_client(label_studio_prelabel_threshold=threshold)
    want = expected(concept(full, ["cup", "saucer"], threshold), ["Cup", "Saucer"])
    firsts = [next(w for w in want if w[0] == label) for label in ("Cup", "Saucer")]
    answer = predict(client, BRUSH_CONFIG)
    same(brush_masks(answer["results"][0]), firsts)
    assert len(want) >= 4  # two or more of each phrase: the cap cut both, the note says so
    assert "SAM2SERVE_SAM3_MAX_INSTANCES_PER_PROMPT" in answer["note"]
    assert "'cup'" in answer["note"] and "'saucer'" in answer["note"]


def test_prelabel_notes(make_sam3_client) -> None:  # type: ignore[no-untyped-def]
    client = make_sam3_client(label_studio_prelabel_threshold=1.0)
    nothing = predict(client, BRUSH_CONFIG)
    assert nothing["results"][0]["result"] == [] and nothing["results"][0]["score"] == 0.0
    assert "found no instance of 'cup', 'saucer' scoring over 1.0" in nothing["note"]
    keypoints_only = """<View><Image name="image" value="$image"/>
      <KeyPointLabels name="kp" toName="image"><Label value="Cup"/></KeyPointLabels></View>"""
    answer = predict(client, keypoints_only)
    assert answer["results"] == [[]] and "no labels to pre-label" in answer["note"]
    long_label = BRUSH_CONFIG.replace("Saucer", "Saucer " + "x" * 200)
    answer = predict(make_sam3_client(sam3={"max_phrase_chars": 100}), long_label)
    assert "not searched for 'saucer xxx" in answer["note"] and "MAX_PHRASE_CHARS" in answer["note"]
    assert "found no instance of 'cup' scoring" in answer["note"]  # 'cup' still searched for


def test_prelabel_time_budget(make_sam3_client) -> None:  # type: ignore[no-untyped-def]
    """A spent budget: the first task stops after its first SAM 3 request (one phrase per
    request here), the second task is not started; both say so."""
    client = make_sam3_client(sam3={"max_prompts": 1}, label_studio_budget_s=0.001)
    tasks = [{"id": i, "data": {"image": DATA_URI}} for i in (1, 2)]
    r = client.post(LS + "/predict", json={"tasks": tasks, "label_config": BRUSH_CONFIG})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert "not searched for 'saucer'" in first["note"]
    assert {item["value"]["brushlabels"][0] for item in first["result"]} <= {"Cup"}
    assert second == [] and "not pre-labelled in this call" in r.json()["note"]
