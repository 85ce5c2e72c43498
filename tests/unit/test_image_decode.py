"""sam2serve.media.decode: decoding, pixel modes, EXIF, hashing, base64 forms, refusals."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge
from sam2serve.media.decode import (
    LoadedImage,
    decode_base64,
    decode_image_bytes,
    load_image,
    rgb_content_hash,
)

BIG = 10_000_000


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noise_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_rgb(out: LoadedImage, h: int, w: int) -> None:
    assert out.rgb.shape == (h, w, 3)
    assert out.rgb.dtype == np.uint8
    assert out.rgb.flags.c_contiguous
    assert out.rgb.flags.writeable
    assert out.hw == (h, w)
    assert len(out.content_hash) == 64


# -- formats and pixel modes ---------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip_exactly(fmt: str) -> None:
    rgb = noise_rgb(7, 5)
    out = decode_image_bytes(encode(Image.fromarray(rgb), fmt), max_pixels=BIG)
    check_rgb(out, 7, 5)
    np.testing.assert_array_equal(out.rgb, rgb)
    assert out.content_hash == rgb_content_hash(rgb)


def test_webp_lossless_round_trip() -> None:
    rgb = noise_rgb(6, 9)
    data = encode(Image.fromarray(rgb), "WEBP", lossless=True)
    np.testing.assert_array_equal(decode_image_bytes(data, max_pixels=BIG).rgb, rgb)


def test_jpeg_decodes_close_to_source() -> None:
    rgb = np.full((16, 24, 3), (200, 40, 90), np.uint8)
    out = decode_image_bytes(encode(Image.fromarray(rgb), "JPEG", quality=95), max_pixels=BIG)
    check_rgb(out, 16, 24)
    assert np.abs(out.rgb.astype(int) - rgb.astype(int)).max() <= 6


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (4, 3), 1)
    im.putpalette([0, 0, 0, 10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 9))
    im.putpixel((0, 0), 2)
    if transparent:
        im.info["transparency"] = 2
    return im


def _gray16(values: list[list[int]]) -> Image.Image:
    return Image.fromarray(np.array(values, dtype=np.uint16))


MODE_CASES = [
    # (case id, image, format, expected pixel (0, 0), expected pixel (0, 1) or None)
    ("L-png", Image.new("L", (3, 2), 77), "PNG", (77, 77, 77), None),
    ("LA-png", Image.new("LA", (3, 2), (77, 0)), "PNG", (77, 77, 77), None),
    ("RGBA-png", Image.new("RGBA", (3, 2), (10, 20, 30, 0)), "PNG", (10, 20, 30), None),
    ("RGBA-webp", Image.new("RGBA", (3, 2), (10, 20, 30, 5)), "WEBP", (10, 20, 30), None),
    ("RGBA-tiff", Image.new("RGBA", (3, 2), (10, 20, 30, 0)), "TIFF", (10, 20, 30), None),
    ("P-png", _palette_image(False), "PNG", (200, 100, 50), (10, 20, 30)),
    ("P-transparent-png", _palette_image(True), "PNG", (200, 100, 50), (10, 20, 30)),
    ("P-bmp", _palette_image(False), "BMP", (200, 100, 50), (10, 20, 30)),
    ("CMYK-tiff", Image.new("CMYK", (3, 2), (0, 0, 0, 0)), "TIFF", (255, 255, 255), None),
    ("CMYK-jpeg", Image.new("CMYK", (3, 2), (0, 0, 0, 255)), "JPEG", (0, 0, 0), None),
    ("1-png", Image.new("1", (3, 2), 1), "PNG", (255, 255, 255), None),
    ("1-bmp", Image.new("1", (3, 2), 0), "BMP", (0, 0, 0), None),
    ("1-tiff", Image.new("1", (3, 2), 1), "TIFF", (255, 255, 255), None),
    # 16-bit scales (65535 -> 255, 25700 -> 100), it does not clip (which would give 255)
    ("I16-png", _gray16([[65535, 25700]]), "PNG", (255, 255, 255), (100, 100, 100)),
    ("I16-tiff", _gray16([[25700, 0]]), "TIFF", (100, 100, 100), (0, 0, 0)),
    ("I32-tiff", Image.fromarray(np.array([[65535, 257]], np.int32)), "TIFF", (255,) * 3, (1,) * 3),
]


@pytest.mark.parametrize(
    ("image", "fmt", "first", "second"),
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_pixel_modes_become_rgb_uint8(
    image: Image.Image, fmt: str, first: tuple, second: tuple | None
) -> None:
    out = decode_image_bytes(encode(image, fmt), max_pixels=BIG)
    w, h = image.size
    check_rgb(out, h, w)
    tolerance = 3 if fmt in ("JPEG", "WEBP") else 0  # lossy
    assert np.abs(out.rgb[0, 0].astype(int) - first).max() <= tolerance
    if second is not None:
        assert tuple(out.rgb[0, 1]) == second


@pytest.mark.parametrize("fmt", ["MPO", "TIFF", "WEBP"])
def test_multi_frame_files_use_the_first_frame(fmt: str) -> None:
    first, second = Image.new("RGB", (8, 6), (250, 0, 0)), Image.new("RGB", (8, 6))
    data = encode(first, fmt, save_all=True, append_images=[second])
    out = decode_image_bytes(data, max_pixels=BIG)
    assert out.hw == (6, 8) and out.rgb[0, 0, 0] > 200


def test_float_tiff_is_scaled() -> None:
    im = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    out = decode_image_bytes(encode(im, "TIFF"), max_pixels=BIG)
    assert out.rgb[0, :, 0].tolist() == [0, 128, 255]


# -- EXIF orientation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "corner_yx"),
    [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0))],
)
def test_exif_orientation_is_applied(orientation: int, corner_yx: tuple[int, int]) -> None:
    h, w = 32, 48
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 2] = 255  # blue
    rgb[:8, :8] = (255, 0, 0)  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image_bytes(data, max_pixels=BIG)
    expected_hw = (w, h) if orientation in (6, 8) else (h, w)
    assert out.hw == expected_hw
    y, x = corner_yx
    red, _, blue = (int(v) for v in out.rgb[y, x])
    assert red > 200 and blue < 60, f"red block not at {corner_yx}: {out.rgb[y, x]}"


# -- content hash --------------------------------------------------------------------


def test_hash_is_stable_and_depends_on_pixels_and_shape() -> None:
    rgb = noise_rgb(4, 3)
    png = encode(Image.fromarray(rgb), "PNG")
    first = decode_image_bytes(png, max_pixels=BIG).content_hash
    # same pixels, different encoding: same hash
    assert decode_image_bytes(encode(Image.fromarray(rgb), "BMP"), max_pixels=BIG).content_hash == (
        first
    )
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert rgb_content_hash(changed) != first
    # same bytes, different shape (4x3 vs 2x6 vs 6x2)
    raw = rgb.tobytes()
    hashes = {first}
    for w, h in [(6, 2), (2, 6)]:
        other = Image.frombytes("RGB", (w, h), raw)
        hashes.add(decode_image_bytes(encode(other, "PNG"), max_pixels=BIG).content_hash)
    assert len(hashes) == 3


# -- base64 --------------------------------------------------------------------------

_PNG = encode(Image.fromarray(noise_rgb(9, 11, seed=3)), "PNG")
_STD = base64.b64encode(_PNG).decode()
_URLSAFE = base64.urlsafe_b64encode(_PNG).decode()


@pytest.mark.parametrize(
    "value",
    [
        _STD,
        f"data:image/png;base64,{_STD}",
        f"DATA:image/png;BASE64,{_STD}",
        f"data:application/octet-stream;base64,{_STD}",
        "\n".join(_STD[i : i + 76] for i in range(0, len(_STD), 76)),
        f"  {_STD[:40]} \r\n\t {_STD[40:]}\n",
        _STD.rstrip("="),
        _URLSAFE,
        _URLSAFE.rstrip("="),
    ],
    ids=["plain", "data-uri", "data-uri-upper", "data-uri-octet", "mime-lines", "spaces",
         "no-padding", "urlsafe", "urlsafe-no-padding"],
)  # fmt: skip
def test_base64_forms(value: str) -> None:
    out = decode_base64(value, max_bytes=BIG, max_pixels=BIG)
    assert out.hw == (9, 11)


def test_urlsafe_case_really_uses_urlsafe_characters() -> None:
    assert set(_STD) & {"+", "/"} and set(_URLSAFE) & {"-", "_"}


@pytest.mark.parametrize(
    "value",
    ["", "   \n ", "data:image/png;base64,", "data:image/png,abcd", "!!!!", "abcde",
     "ab$d", "ümlä", "YWJj\x00"],
)  # fmt: skip
def test_bad_base64_names_image_value(value: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_base64(value, max_bytes=BIG, max_pixels=BIG)
    assert info.value.field == "image.value"
    assert "image.value" in info.value.message and "base64" in info.value.message


def test_base64_of_non_image_names_image() -> None:
    with pytest.raises(BadRequest) as info:
        decode_base64(base64.b64encode(b"hello world").decode(), max_bytes=BIG, max_pixels=BIG)
    assert info.value.field == "image"


def test_base64_over_max_bytes() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_base64(_STD, max_bytes=len(_PNG) - 1, max_pixels=BIG)
    assert info.value.field == "image.value"
    assert str(len(_PNG) - 1) in info.value.message
    assert decode_base64(_STD, max_bytes=len(_PNG), max_pixels=BIG).hw == (9, 11)


# -- refusals ------------------------------------------------------------------------


def _truncated(fmt: str) -> bytes:
    data = encode(Image.fromarray(noise_rgb(64, 64, seed=1)), fmt)
    return data[: len(data) // 2]


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (pixel data: one 1x1 row)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


BAD_IMAGES = [
    ("empty", b""),
    ("garbage", b"this is not an image at all" * 3),
    ("zeros", bytes(100)),
    ("truncated-png", _truncated("PNG")),
    ("truncated-jpeg", _truncated("JPEG")),
    ("png-signature-only", b"\x89PNG\r\n\x1a\n"),
    ("gif", encode(Image.new("RGB", (4, 4)), "GIF")),
    ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>'),
    ("ico", encode(Image.new("RGB", (16, 16)), "ICO")),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_bad_images_are_bad_requests_naming_image(data: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        decode_image_bytes(data, max_pixels=BIG)
    assert info.value.field == "image"
    assert info.value.message.startswith("image: ")
    assert "JPEG, PNG, WEBP, BMP or TIFF" in info.value.message


def test_pixel_cap_is_checked_from_the_header_before_decoding() -> None:
    # 7000 x 7000 = 49 M pixels claimed by a ~70-byte file with 1 pixel of data: decoding it
    # would fail as truncated (400), so a 413 proves the header check ran first.
    data = _png_claiming(7000, 7000)
    assert len(data) < 100
    with pytest.raises(PayloadTooLarge) as info:
        decode_image_bytes(data, max_pixels=40_000_000)
    assert info.value.field == "image"
    assert "40000000" in info.value.message and "7000x7000" in info.value.message
    with pytest.raises(BadRequest):  # under the cap: the real decode finds it truncated
        decode_image_bytes(data, max_pixels=50_000_000)


@pytest.mark.parametrize("max_pixels", [40_000_000, 10**12])
def test_pixel_bomb_refused_even_over_pillow_limit(max_pixels: int) -> None:
    # 20000 x 20000 = 400 M pixels: ours (or Pillow's own bomb guard) refuses it as 413
    with pytest.raises(PayloadTooLarge) as info:
        decode_image_bytes(_png_claiming(20000, 20000), max_pixels=max_pixels)
    assert info.value.field == "image"


def test_exact_pixel_cap_is_allowed() -> None:
    data = encode(Image.new("RGB", (5, 4)), "PNG")
    assert decode_image_bytes(data, max_pixels=20).hw == (4, 5)
    with pytest.raises(PayloadTooLarge):
        decode_image_bytes(data, max_pixels=19)


# -- load_image ----------------------------------------------------------------------


class FakeFetcher:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.urls: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.urls.append(url)
        return self.data


def _load(kind: str, value: str, fetcher: FakeFetcher | None = None, **settings: object):
    fetcher = fetcher or FakeFetcher(b"")
    return asyncio.run(
        load_image(kind, value, settings=Settings(**settings), fetcher=fetcher)  # type: ignore[arg-type]
    )


def test_load_image_base64_and_url() -> None:
    assert _load("base64", _STD).hw == (9, 11)
    fetcher = FakeFetcher(_PNG)
    out = _load("url", "https://images.example/a.png", fetcher)
    assert out.hw == (9, 11) and fetcher.urls == ["https://images.example/a.png"]


def test_load_image_applies_settings_caps() -> None:
    with pytest.raises(PayloadTooLarge):
        _load("base64", _STD, max_body_bytes=10)
    with pytest.raises(PayloadTooLarge):
        _load("url", "https://x.example/a.png", FakeFetcher(_PNG), max_image_pixels=50)


@pytest.mark.parametrize("kind", ["numpy", "numpy_object", "pil", "pickle", "NumPy"])
def test_pickle_kinds_are_refused_with_the_reason(kind: str) -> None:
    with pytest.raises(BadRequest) as info:
        _load(kind, "gASVAAAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAJpZJSFlFKULg==")
    message = info.value.message
    assert info.value.field == "image.type"
    assert "arbitrary code" in message and "base64" in message and "https" in message


@pytest.mark.parametrize("kind", ["", "file", "path", "multipart"])
def test_unknown_kinds_are_refused(kind: str) -> None:
    with pytest.raises(BadRequest) as info:
        _load(kind, "/etc/passwd")
    assert info.value.field == "image.type"
    assert "'base64' or 'url'" in info.value.message
