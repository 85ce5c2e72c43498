"""Refuse before work: budgets that the request and the image header decide (pixels, prompts
x pixels, grid points) are answered before any pixel is decoded, any model is loaded or any
image embedded. The images here are PNGs whose header claims a size their few bytes of
pixel data cannot fill: decoding one would be a 400 (truncated), so a 413 proves the answer
came from the header; the decoder is also watched directly."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from sam2serve.local.segmenter import Segmenter

POINT = {"points": [{"x": 10, "y": 10, "positive": True}]}


def png_claiming(width: int, height: int) -> str:
    """base64 of a 1x1 PNG whose IHDR claims width x height."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return base64.b64encode(bytes(data)).decode()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every full image decode (Pillow's `load`) from here on, as (width, height)."""
    seen: list[tuple[int, int]] = []
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile):  # type: ignore[no-untyped-def]
        seen.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


CASES = [
    # (route, body extras, status, words in the message)
    (
        "/sam2/segment_image",
        {"prompts": [POINT] * 16, "format": "rle"},
        413,
        ["SAM2SERVE_MAX_MASK_PIXELS", "16 prompts x 6000x6000", "at most 4 prompts"],
    ),
    (
        "/sam2/segment_everything",
        {"points_per_side": 64, "crop_n_layers": 1},  # 20,480 grid points: over 16,384
        413,
        ["20480 grid points", "points_per_side"],
    ),
]


@pytest.mark.parametrize(("route", "extra", "status", "words"), CASES)
def test_refused_from_the_header_before_decode_or_embed(  # type: ignore[no-untyped-def]
    client, decodes, route: str, extra: dict, status: int, words: list[str]
) -> None:
    body = {"image": {"type": "base64", "value": png_claiming(6000, 6000)}, **extra}
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["message"]
    service = client.app.state.services.images
    assert decodes == []  # no pixel decoded
    assert service.pool.loaded == []  # no model loaded
    assert service.store.local.misses == 0 and len(service.store.local) == 0  # no embed


def test_within_the_budget_the_same_header_is_decoded(client, decodes) -> None:  # type: ignore[no-untyped-def]
    """The control: 4 prompts fit the budget at 6000 x 6000, so the image is decoded (and,
    holding one pixel row, found truncated: 400)."""
    body = {"image": {"type": "base64", "value": png_claiming(6000, 6000)}, "prompts": [POINT] * 4}
    r = client.post("/sam2/segment_image", json=body)
    assert r.status_code == 400 and "truncated" in r.json()["message"]
    assert decodes == [(6000, 6000)]


def test_the_mask_budget_is_checked_on_ids_too(client) -> None:  # type: ignore[no-untyped-def]
    """An id-only click has no header: the late check (on the click lane) still holds."""
    from tests.conftest import encode_image, photos

    image = {"type": "base64", "value": encode_image(photos()["astronaut"])}  # 512 x 512
    image_id = client.post("/sam2/embed_image", json={"image": image}).json()["image_id"]
    client.app.state.services.images.settings.max_mask_pixels = 262_144  # one prompt's worth
    r = client.post("/sam2/segment_image", json={"image_id": image_id, "prompts": [POINT] * 2})
    assert r.status_code == 413 and "SAM2SERVE_MAX_MASK_PIXELS" in r.json()["message"]


def test_in_process_pixels_are_checked_before_embedding(tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from sam2serve.client import PayloadTooLargeError
    from sam2serve.testing import registry_with_test_model
    from tests.conftest import tiny_settings

    settings = tiny_settings(tiny_weights_dir, max_mask_pixels=10_000)
    with Segmenter(settings=settings, registry=registry_with_test_model()) as segmenter:
        rgb = np.zeros((100, 200, 3), dtype=np.uint8)  # 20,000 pixels: one prompt is over
        with pytest.raises(PayloadTooLargeError, match="SAM2SERVE_MAX_MASK_PIXELS"):
            segmenter.segment_image(rgb, points=[(5, 5)])
        cache = segmenter._services.images.store.local  # nothing was embedded
        assert cache.misses == 0
