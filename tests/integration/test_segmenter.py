"""In-process Segmenter: the server's own service code, no HTTP. Same request -> exactly the
server's answer (masks and confidences), same typed errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sam2serve.client import (
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
    Sam2Client,
    UnavailableError,
)
from sam2serve.local.segmenter import Segmenter
from sam2serve.testing import registry_with_test_model
from tests.conftest import photos, tiny_settings
from tests.integration.test_sdk import live_server

RGB = photos()["chelsea"]
POINTS = [(200, 150), (20, 20, False)]
BOXES = [(100, 50, 300, 250), (0, 0, 120, 90)]


@pytest.fixture(scope="module")
def segmenter(tiny_weights_dir: Path) -> Iterator[Segmenter]:
    with Segmenter(
        settings=tiny_settings(tiny_weights_dir), registry=registry_with_test_model()
    ) as seg:
        yield seg


@pytest.fixture(scope="module")
def client(tiny_weights_dir: Path) -> Iterator[Sam2Client]:
    with live_server(tiny_weights_dir) as url, Sam2Client(url) as c:
        yield c


@pytest.mark.parametrize("fmt", ["rle", "json", "binary"])
@pytest.mark.parametrize("multimask", [True, False])
def test_same_request_same_answer_as_the_server(
    segmenter: Segmenter, client: Sam2Client, fmt: str, multimask: bool
) -> None:
    kwargs = {"points": POINTS, "boxes": BOXES, "format": fmt, "multimask_output": multimask}
    local = segmenter.segment_image(RGB, **kwargs)
    remote = client.segment_image(RGB, **kwargs)
    assert len(local) == len(remote) == 2
    np.testing.assert_array_equal(local.masks, remote.masks)
    np.testing.assert_array_equal(local.confidences, remote.confidences)
    if fmt != "binary":
        assert [p["masks"] for p in local.raw["predictions"]] == [
            p["masks"] for p in remote.raw["predictions"]
        ]
    else:
        for a, b in zip(local, remote, strict=True):
            np.testing.assert_array_equal(a.logits, b.logits)
            np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)


def test_embed_ids_and_segment_by_id(segmenter: Segmenter, client: Sam2Client) -> None:
    local_id = segmenter.embed_image(RGB).image_id
    assert local_id == client.embed_image(RGB).image_id  # the same content hash
    assert segmenter.embed_image(RGB, image_id="cat").image_id == "cat"
    by_id = segmenter.segment_image(image_id="cat", points=POINTS, format="json")
    direct = segmenter.segment_image(RGB, points=POINTS, format="json")
    np.testing.assert_array_equal(by_id.masks, direct.masks)  # polygons filled: size remembered
    bgr = segmenter.segment_image(np.ascontiguousarray(RGB[:, :, ::-1]), bgr=True, points=POINTS)
    np.testing.assert_array_equal(bgr.masks, segmenter.segment_image(RGB, points=POINTS).masks)


def test_typed_errors_like_the_client(segmenter: Segmenter) -> None:
    with pytest.raises(NotFoundError, match="not in cache"):
        segmenter.segment_image(image_id="never", points=POINTS)
    with pytest.raises(BadRequestError, match="vit_h"):
        segmenter.embed_image(RGB, model="vit_h")
    with pytest.raises(BadRequestError) as info:
        segmenter.embed_image(b"not an image")
    assert info.value.status == 400 and info.value.field == "image"
    with pytest.raises(BadRequestError, match="https"):
        segmenter.embed_image("http://example.com/cat.jpg")  # same URL policy as the server
    with pytest.raises(InvalidRequestError, match="image_id"):
        segmenter.embed_image(RGB, image_id="no/slashes")
    with pytest.raises(UnavailableError, match="sam2serve download"):
        segmenter.load("hiera_large")
    assert segmenter.model_id() == "test_tiny"
    assert segmenter.model_id("hiera_small") == "sam2.1_hiera_small"


def test_thread_safe_and_closable(tiny_weights_dir: Path) -> None:
    seg = Segmenter(settings=tiny_settings(tiny_weights_dir), registry=registry_with_test_model())
    expected = seg.segment_image(RGB, points=POINTS)
    results: list = []

    def work() -> None:
        results.append(seg.segment_image(RGB, points=POINTS))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    for r in results:
        np.testing.assert_array_equal(r.masks, expected.masks)
    seg.close()
    seg.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        seg.embed_image(RGB)


def test_settings_overrides(tiny_weights_dir: Path, tmp_path: Path) -> None:
    with Segmenter(
        "hiera_small",
        weights_dir=tmp_path,
        device="cpu",
        allow_download=False,
        settings=tiny_settings(tiny_weights_dir),
        registry=registry_with_test_model(),
    ) as seg:
        assert seg.settings.weights_dir == tmp_path and seg.model_id() == "sam2.1_hiera_small"
        with pytest.raises(UnavailableError, match=str(tmp_path)):
            seg.embed_image(RGB)
