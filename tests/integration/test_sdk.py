"""The SDK against a LIVE local server (uvicorn in a background thread, tiny random model):
every input kind, ids, conveniences, formats, typed errors; sync and async."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2serve.client import (
    AsyncSam2Client,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
    Sam2Client,
    Sam2ConnectionError,
    UnauthorizedError,
    UnavailableError,
)
from tests.conftest import photos, tiny_settings
from tests.helpers_server import threaded_server

RGB = photos()["coffee"]  # 400 x 600
H, W = RGB.shape[:2]
POINTS = [(300, 200), (50, 50, False)]
BOXES = [(200, 150, 400, 250)]


@contextmanager
def live_server(weights_dir: Path, **overrides: object) -> Iterator[str]:
    """A threaded uvicorn server on the tiny test model."""
    with threaded_server(tiny_settings(weights_dir, **overrides)) as url:
        yield url


@pytest.fixture(scope="module")
def server(tiny_weights_dir: Path) -> Iterator[str]:
    with live_server(tiny_weights_dir) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Sam2Client]:
    with Sam2Client(server) as c:
        yield c


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.confidences, b.confidences)


def test_embed_then_segment_by_image_id(client: Sam2Client) -> None:
    embedded = client.embed_image(RGB, image_id="coffee-1")
    assert embedded.image_id == "coffee-1" and embedded.time >= 0
    by_id = client.segment_image(image_id="coffee-1", points=POINTS, boxes=BOXES)
    assert len(by_id) == 1 and by_id.image_size == (H, W)
    assert by_id[0].mask.shape == (H, W) and by_id[0].mask.dtype == bool
    assert isinstance(by_id[0].confidence, float)
    _same(by_id, client.segment_image(RGB, points=POINTS, boxes=BOXES))
    # without an id the server names the image by its content hash
    assert client.embed_image(RGB).image_id == client.embed_image(_png(RGB)).image_id


@pytest.mark.parametrize(
    "kind",
    ["path", "str path", "bytes", "pil", "bgr array"],
)
def test_every_input_kind_gives_the_rgb_array_result(
    client: Sam2Client, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "coffee.png"
    path.write_bytes(_png(RGB))
    image, bgr = {
        "path": (path, False),
        "str path": (str(path), False),
        "bytes": (path.read_bytes(), False),
        "pil": (Image.fromarray(RGB), False),
        "bgr array": (np.ascontiguousarray(RGB[:, :, ::-1]), True),
    }[kind]
    expected = client.segment_image(RGB, points=POINTS)
    got = client.segment_image(image, points=POINTS, bgr=bgr)
    _same(got, expected)
    assert client.embed_image(image, bgr=bgr).image_id == client.embed_image(RGB).image_id


def test_url_input_is_fetched_by_the_server_which_refuses_loopback_http(
    client: Sam2Client, server: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        client.embed_image(f"{server}/healthz")
    assert info.value.status == 400 and info.value.field.startswith("image")
    assert "http" in info.value.message


def test_boxes_and_points_conveniences_equal_the_api_center_form(client: Sam2Client) -> None:
    # corner (200, 150)-(400, 250) is centre (300, 200), 200 x 100: by hand
    api = [
        {
            "box": {"x": 300, "y": 200, "width": 200, "height": 100},
            "points": [
                {"x": 300, "y": 200, "positive": True},
                {"x": 50, "y": 50, "positive": False},
            ],
        },
        {"box": {"x": 100, "y": 100, "width": 100, "height": 100}},
    ]
    convenient = client.segment_image(RGB, points=POINTS, boxes=[*BOXES, (50, 50, 150, 150)])
    assert len(convenient) == 2
    _same(convenient, client.segment_image(RGB, prompts=api))
    _same(convenient, client.segment_image(RGB, prompts={"prompts": api}))


def test_formats_agree_and_rle_mask_equals_the_binary_output(client: Sam2Client) -> None:
    client.embed_image(RGB, image_id="fmt")
    kwargs = {"image_id": "fmt", "points": POINTS, "boxes": [*BOXES, (0, 0, 100, 80)]}
    rle = client.segment_image(format="rle", **kwargs)
    binary = client.segment_image(format="binary", **kwargs)
    polygons = client.segment_image(format="json", **kwargs)
    for r, b, p in zip(rle, binary, polygons, strict=True):
        np.testing.assert_array_equal(r.mask, b.logits > 0)  # exact: holes included
        assert r.confidence == p.confidence
        assert p.polygons == r.polygons  # the server traces the same mask
        assert p.mask.shape == (H, W)  # filled with the size the client remembered
    holes = client.segment_image(format="json", polygon_holes=True, **kwargs)
    np.testing.assert_array_equal(holes.masks, rle.masks)  # even-odd fill with holes: exact


def test_no_prompts_yields_one_prediction(client: Sam2Client) -> None:
    assert len(client.segment_image(RGB)) == 1


def test_to_detections_and_annotated_png(client: Sam2Client, tmp_path: Path) -> None:
    result = client.segment_image(RGB, boxes=[BOXES[0], (0, 0, 100, 80)])
    det = result.to_detections()
    assert det.mask.shape == (2, H, W) and det.xyxy.shape == (2, 4)
    for mask, box in zip(result.masks, det.xyxy, strict=True):
        ys, xs = np.nonzero(mask)
        assert tuple(box) == (xs.min(), ys.min(), xs.max(), ys.max())
    out = result.save_annotated(tmp_path / "annotated.png")
    drawn = np.asarray(Image.open(out))
    assert drawn.shape == RGB.shape and not np.array_equal(drawn, RGB)


def test_readme_snippet(server: str, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(RGB).save(photo)
    result = Sam2Client(server).segment_image(str(photo), points=[(320, 240)])
    result.save_annotated(tmp_path / "annotated.png")
    assert Image.open(tmp_path / "annotated.png").size == Image.open(photo).size


def test_typed_errors_from_the_live_server(client: Sam2Client) -> None:
    with pytest.raises(NotFoundError, match="not in cache") as info:
        client.segment_image(image_id="never-embedded", points=POINTS)
    assert info.value.status == 404
    with pytest.raises(BadRequestError, match="vit_h") as info:
        client.embed_image(RGB, model="vit_h")
    assert info.value.field == "sam2_version_id"
    with pytest.raises(BadRequestError, match="image"):
        client.embed_image(b"definitely not an image")
    with pytest.raises(InvalidRequestError) as info:
        client.embed_image(RGB, image_id="../etc/passwd")
    assert info.value.status == 422 and "image_id" in info.value.message
    start = time.monotonic()
    with pytest.raises(UnavailableError, match="sam2serve download") as info:
        client.embed_image(RGB, model="hiera_large")  # no weights for it in the tiny dir
    assert info.value.status == 503 and time.monotonic() - start < 5  # not retried


def test_api_keys(tiny_weights_dir: Path) -> None:
    with live_server(tiny_weights_dir, api_keys=["k-one"]) as url:
        for key in (None, "wrong"):
            with Sam2Client(url, api_key=key) as c, pytest.raises(UnauthorizedError) as info:
                c.embed_image(RGB)
            assert info.value.status == 401 and info.value.field == "api_key"
        with Sam2Client(url, api_key="k-one") as c:
            image_id = c.embed_image(RGB).image_id
            assert len(c.segment_image(image_id=image_id, points=POINTS)) == 1


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with Sam2Client(f"http://127.0.0.1:{port}") as c, pytest.raises(Sam2ConnectionError):
        c.embed_image(RGB)


def test_async_client_matches_sync(client: Sam2Client, server: str) -> None:
    expected = client.segment_image(RGB, points=POINTS, boxes=BOXES)

    async def go() -> tuple:
        async with AsyncSam2Client(server) as c:
            embedded = await c.embed_image(RGB, image_id="async-1")
            results = await asyncio.gather(
                c.segment_image(image_id="async-1", points=POINTS, boxes=BOXES),
                c.segment_image(RGB, points=POINTS, boxes=BOXES, format="json"),
                c.segment_image(
                    np.ascontiguousarray(RGB[:, :, ::-1]), bgr=True, points=POINTS, boxes=BOXES
                ),
            )
            with pytest.raises(NotFoundError):
                await c.segment_image(image_id="nope", points=POINTS)
            with pytest.raises(UnavailableError):
                await c.embed_image(RGB, model="hiera_large")
            return embedded, results

    embedded, (by_id, polygons, bgr) = asyncio.run(go())
    assert embedded.image_id == "async-1"
    _same(by_id, expected)
    _same(bgr, expected)
    assert polygons[0].confidence == expected[0].confidence
