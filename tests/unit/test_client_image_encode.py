"""Image inputs: every kind becomes the API's `image` field, with the size the server will see."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2serve.client.image_encode import encode_image, is_url, load_rgb
from sam2serve.media.decode import decode_image_bytes

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def _decoded(payload: dict) -> np.ndarray:
    """What the server's own decoder makes of a base64 payload."""
    assert payload["type"] == "base64"
    return decode_image_bytes(base64.b64decode(payload["value"]), max_pixels=10**8).rgb


def _png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_with_orientation(width: int, height: int, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: RGB, id="rgb array"),
        pytest.param(lambda tmp: Image.fromarray(RGB), id="pil"),
        pytest.param(lambda tmp: _png_bytes(RGB), id="bytes"),
        pytest.param(lambda tmp: _write(tmp / "a.png", _png_bytes(RGB)), id="path"),
        pytest.param(lambda tmp: str(_write(tmp / "b.png", _png_bytes(RGB))), id="str path"),
    ],
)
def test_every_kind_reaches_the_server_as_the_same_pixels(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    encoded = encode_image(make(tmp_path))
    assert encoded.size == (30, 40)
    np.testing.assert_array_equal(_decoded(encoded.payload), RGB)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_bgr_array_equals_the_rgb_array_converted() -> None:
    bgr = np.ascontiguousarray(RGB[:, :, ::-1])
    assert encode_image(bgr, bgr=True) == encode_image(RGB)
    # without the flag, channels are taken as RGB: red and blue swap
    np.testing.assert_array_equal(_decoded(encode_image(bgr).payload), bgr)
    np.testing.assert_array_equal(load_rgb(bgr, bgr=True), RGB)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, axis=2)),  # gray
        (RGB[:, :, :1], np.repeat(RGB[:, :, :1], 3, axis=2)),  # (H, W, 1)
        (np.dstack([RGB, np.full(RGB.shape[:2], 128, np.uint8)]), RGB),  # RGBA: alpha dropped
        (np.eye(4, dtype=bool), np.repeat((np.eye(4) * 255).astype(np.uint8)[:, :, None], 3, 2)),
    ],
)
def test_gray_alpha_and_bool_arrays(array: np.ndarray, expected: np.ndarray) -> None:
    encoded = encode_image(array)
    np.testing.assert_array_equal(_decoded(encoded.payload), expected)
    np.testing.assert_array_equal(load_rgb(array), expected)


@pytest.mark.parametrize(
    ("array", "error", "words"),
    [
        (RGB.astype(np.float32) / 255, TypeError, "uint8"),
        (RGB.astype(np.uint16), TypeError, "uint8"),
        (np.zeros((4, 4, 2), np.uint8), ValueError, "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), ValueError, "shape"),
        (np.zeros((0, 4, 3), np.uint8), ValueError, "empty"),
    ],
)
def test_bad_arrays_are_refused_with_a_fix(array: np.ndarray, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        encode_image(array)


def test_url_is_sent_for_the_server_to_fetch() -> None:
    for url in ("https://example.com/a.jpg", "HTTP://example.com/a.jpg"):
        assert is_url(url)
        assert encode_image(url).payload == {"type": "url", "value": url}
        assert encode_image(url).size is None
    assert not is_url("photos/https.jpg")


def test_missing_file_and_unknown_types(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        encode_image(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="not a file"):
        encode_image(tmp_path)
    with pytest.raises(TypeError, match="path, bytes, PIL image, numpy array"):
        encode_image(12)  # type: ignore[arg-type]


def test_undecodable_bytes_are_sent_anyway_for_the_server_to_explain() -> None:
    encoded = encode_image(b"not an image")
    assert encoded.size is None and encoded.payload["type"] == "base64"
    with pytest.raises(ValueError, match="not an image"):
        load_rgb(b"not an image")


@pytest.mark.parametrize(("orientation", "size"), [(1, (20, 40)), (6, (40, 20)), (8, (40, 20))])
def test_size_follows_exif_orientation_like_the_server(orientation: int, size: tuple) -> None:
    data = _jpeg_with_orientation(40, 20, orientation)
    assert encode_image(data).size == size
    assert load_rgb(data).shape[:2] == size
    assert decode_image_bytes(data, max_pixels=10**6).rgb.shape[:2] == size


def test_pil_images_are_sent_as_shown_without_exif_rotation() -> None:
    im = Image.open(io.BytesIO(_jpeg_with_orientation(40, 20, 6)))
    encoded = encode_image(im)
    assert encoded.size == (20, 40)
    assert _decoded(encoded.payload).shape[:2] == (20, 40)
    assert load_rgb(im).shape[:2] == (20, 40)
    cmyk = Image.new("CMYK", (5, 4))
    assert _decoded(encode_image(cmyk).payload).shape == (4, 5, 3)
