"""SAM 3 everywhere a user looks, on the tiny SAM 3 runtime behind a live local server:
Roboflow's `inference-sdk` (`sam3_*`, sync and async) unchanged, sam2serve's SDK
(`concept_segment`, `sam3_embed_image`: sync, async, in-process Segmenter, equal answers),
`to_detections()` named by phrase, and `sam2serve segment --text`."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sam2serve.client import AsyncSam2Client, BadRequestError, Sam2Client
from sam2serve.client.concept import ConceptResult, concept_prompts
from tests.conftest import photos
from tests.helpers_sam3 import (
    both_registries,
    cli_png_locally_and_from,
    link_weights,
    sam3_settings,
)
from tests.helpers_server import threaded_server

RGB = photos()["coffee"]  # 400 x 600
H, W = RGB.shape[:2]


@pytest.fixture(scope="module")
def weights(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights_dir: Path, sam3_tiny_weights_dir: Path
) -> Path:
    target = tmp_path_factory.mktemp("weights-both")
    return link_weights(target, tiny_weights_dir, sam3_tiny_weights_dir)


@pytest.fixture(scope="module")
def server(weights: Path) -> Iterator[str]:
    with threaded_server(sam3_settings(weights), both_registries()) as url:
        yield url


@pytest.fixture(scope="module")
def threshold(server: str) -> float:
    """A threshold the 4th best "cup" instance is under (random weights score in a band)."""
    with Sam2Client(server) as client:
        scores = client.concept_segment(RGB, text="cup", threshold=0.0).confidences
    ordered = np.sort(scores)[::-1]
    assert ordered[2] > ordered[3]
    return float((ordered[2] + ordered[3]) / 2)


def _same(a: ConceptResult, b: ConceptResult) -> None:
    assert a.phrases == b.phrases and a.found == b.found
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.confidences, b.confidences)


def test_inference_sdk_sam3_methods_work_unchanged(server: str) -> None:
    from inference_sdk import InferenceHTTPClient

    client = InferenceHTTPClient(api_url=server, api_key="unused")
    bgr = RGB[:, :, ::-1].copy()  # the SDK takes BGR arrays, sent as JPEG
    prompts = [
        {"type": "text", "text": "cup"},
        {"type": "visual", "boxes": [{"x": 100, "y": 80, "width": 160, "height": 120}],
         "box_labels": [1], "output_prob_thresh": 0.0},
    ]  # fmt: skip
    # the JPEG's own scores (not the PNG's `threshold`): one the 4th best instance is under
    every = client.sam3_concept_segment(bgr, prompts=prompts[:1], output_prob_thresh=0.0)
    scores = sorted(p["confidence"] for p in every["prompt_results"][0]["predictions"])[::-1]
    assert scores[2] > scores[3]
    threshold = (scores[2] + scores[3]) / 2
    got = client.sam3_concept_segment(bgr, prompts=prompts, output_prob_thresh=threshold)
    assert set(got) >= {"prompt_results", "time"}
    first, second = got["prompt_results"]
    assert first["echo"] == {"prompt_index": 0, "type": "text", "text": "cup", "num_boxes": 0}
    assert second["echo"]["type"] == "visual" and second["echo"]["num_boxes"] == 1
    assert len(first["predictions"]) == 3 and len(second["predictions"]) > 3
    for pred in first["predictions"]:
        assert pred["format"] == "polygon" and 0 <= pred["confidence"] <= 1
        assert all(0 <= x < W and 0 <= y < H for polygon in pred["masks"] for x, y in polygon)
    # exactly what the same JPEG bytes get straight over HTTP
    jpeg = base64.b64encode(cv2.imencode(".jpg", bgr)[1].tobytes()).decode()
    direct = httpx.post(
        f"{server}/sam3/concept_segment",
        json={"image": {"type": "base64", "value": jpeg}, "prompts": prompts,
              "output_prob_thresh": threshold},
        timeout=60,
    ).json()  # fmt: skip
    assert direct["prompt_results"] == got["prompt_results"]
    rle = client.sam3_concept_segment(
        bgr, prompts=prompts[:1], output_prob_thresh=threshold, nms_iou_threshold=0.5, format="rle"
    )
    assert rle["prompt_results"][0]["predictions"][0]["masks"]["size"] == [H, W]

    embedded = client.sam3_embed_image(bgr, image_id="coffee-rf")
    assert embedded["image_id"] == "coffee-rf" and embedded["time"] >= 0
    visual = client.sam3_visual_segment(
        bgr, prompts=[{"points": [{"x": 300, "y": 200, "positive": True}]}]
    )
    (pred,) = visual["predictions"]
    assert pred["format"] == "polygon" and pred["masks"]

    async def go() -> tuple[dict, dict, dict]:
        return (
            await client.sam3_concept_segment_async(
                bgr, prompts=prompts, output_prob_thresh=threshold
            ),
            await client.sam3_embed_image_async(bgr),
            await client.sam3_visual_segment_async(
                bgr, prompts=[{"points": [{"x": 300, "y": 200, "positive": True}]}]
            ),
        )

    concept_a, embed_a, visual_a = asyncio.run(go())
    assert concept_a["prompt_results"] == got["prompt_results"]
    assert embed_a["image_id"] and visual_a["predictions"] == visual["predictions"]


def test_sdk_sync_async_and_in_process_agree(
    server: str, weights: Path, threshold: float, tmp_path: Path
) -> None:
    from sam2serve.local.segmenter import Segmenter

    with Sam2Client(server) as client:
        sync = client.concept_segment(RGB, texts=["cup", "saucer"], threshold=threshold)
        image_id = client.sam3_embed_image(RGB, image_id="coffee-sdk").image_id
        by_id = client.concept_segment(
            image_id=image_id, texts=["cup", "saucer"], threshold=threshold
        )
        with pytest.raises(BadRequestError, match="model_id"):
            client.concept_segment(RGB, text="cup", model="test_tiny")  # a SAM 2 id

    async def go() -> ConceptResult:
        async with AsyncSam2Client(server) as aclient:
            await aclient.sam3_embed_image(RGB, image_id="coffee-async")
            return await aclient.concept_segment(RGB, texts=["cup", "saucer"], threshold=threshold)

    asynced = asyncio.run(go())
    with Segmenter(settings=sam3_settings(weights), registry=both_registries()) as seg:
        assert seg.load_sam3() == "sam3_test_tiny"
        local = seg.concept_segment(RGB, texts=["cup", "saucer"], threshold=threshold)
        assert seg.sam3_embed_image(RGB, image_id="local").image_id == "local"
        local_by_id = seg.concept_segment(
            image_id="local", texts=["cup", "saucer"], threshold=threshold
        )
    for other in (by_id, asynced, local, local_by_id):
        _same(sync, other)
    assert sync.phrases == ["cup", "saucer"] and len(sync.of_prompt(0)) == 3
    det = sync.to_detections()
    assert len(det) == len(sync) and det.mask.shape == (len(sync), H, W)
    assert list(det.data["class_name"]) == [sync.class_names[i] for i in det.class_id]
    assert set(det.data["class_name"]) <= {"cup", "saucer"} and "cup" in det.data["class_name"]
    drawn = sync.annotate()
    assert drawn.shape == RGB.shape and (drawn != RGB).any()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"text": "car"}, [{"type": "text", "text": "car"}]),
        ({"texts": ["a", "b"]}, [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        (
            {"text": "car", "boxes": [(1, 2, 3, 4)], "box_labels": [0]},
            [{"type": "visual", "text": "car", "boxes": [{"x0": 1, "y0": 2, "x1": 3, "y1": 4}],
              "box_labels": [0]}],
        ),
        (
            {"boxes": np.array([[1, 2, 3, 4]])},
            [{"type": "visual", "boxes": [{"x0": 1, "y0": 2, "x1": 3, "y1": 4}],
              "box_labels": [1]}],
        ),
    ],
)  # fmt: skip
def test_sdk_prompts(kwargs, expected) -> None:  # type: ignore[no-untyped-def]
    assert concept_prompts(**kwargs) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"text": "a", "texts": ["b"]}, {"texts": ["a", "b"], "boxes": [(1, 2, 3, 4)]},
     {"boxes": [(1, 2, 3, 4)], "box_labels": [1, 0]}],
)  # fmt: skip
def test_sdk_prompts_refused(kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        concept_prompts(**kwargs)


def test_cli_segment_text_writes_an_annotated_png(server: str, tmp_path: Path) -> None:
    from sam2serve.cli.main import app

    src = tmp_path / "photo.png"
    Image.fromarray(RGB).save(src)
    args = ["segment", str(src), "--text", "cup", "--threshold", "0"]
    remote = CliRunner().invoke(
        app, [*args, "-o", str(tmp_path / "url.png"), "--url", server,
              "--json", str(tmp_path / "m.json")],
    )  # fmt: skip
    assert remote.exit_code == 0, remote.output
    assert "cup: 100" in remote.output  # and the per-prompt cap's note
    assert "MAX_INSTANCES_PER_PROMPT" in remote.output
    bad = CliRunner().invoke(app, ["segment", str(src), "--text", "cup", "--point", "1,1"])
    assert bad.exit_code == 2 and "--text" in bad.output


@pytest.mark.slow
def test_cli_segment_text_local_model_draws_what_the_server_does(
    server: str, weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(RGB).save(src)
    args = ["segment", str(src), "--text", "cup", "--threshold", "0"]
    png = cli_png_locally_and_from(server, args, weights, tmp_path, monkeypatch)
    assert png.shape == RGB.shape
