"""Every bad input gets its documented 4xx with a message naming the field; the server
keeps serving afterwards."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from tests.conftest import encode_image, photos

RGB = photos()["chelsea"]
GOOD = {"type": "base64", "value": encode_image(RGB)}
POINT = {"points": [{"x": 10, "y": 10, "positive": True}]}


def _png_header_only(width: int, height: int) -> str:
    """A tiny PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)  # far too little data: never decoded anyway
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
    return base64.b64encode(data + chunk(b"IEND", b"")).decode()


def _truncated_jpeg() -> str:
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()[: len(buf.getvalue()) // 2]).decode()


def _img(value: str, kind: str = "base64") -> dict:
    return {"type": kind, "value": value}


EMBED_CASES = [
    # (name, json body, expected status, word the message must contain)
    ("malformed base64", {"image": _img("###not base64###")}, 400, "image"),
    ("empty base64", {"image": _img("")}, 400, "image"),
    ("not an image", {"image": _img(base64.b64encode(b"hello world" * 10).decode())}, 400, "image"),
    ("truncated jpeg", {"image": _img(_truncated_jpeg())}, 400, "image"),
    ("pixel bomb", {"image": _img(_png_header_only(30000, 30000))}, 413, "image"),
    ("numpy type", {"image": _img("gASVAAAA", "numpy")}, 400, "pickle"),
    ("numpy_object type", {"image": _img("gASVAAAA", "numpy_object")}, 400, "pickle"),
    ("unknown version", {"image": GOOD, "sam2_version_id": "vit_h"}, 400, "sam2_version_id"),
    ("bad image_id", {"image": GOOD, "image_id": "../../etc/passwd"}, 422, "image_id"),
    ("long image_id", {"image": GOOD, "image_id": "a" * 129}, 422, "image_id"),
    ("no image", {}, 422, "image"),
    ("image not object", {"image": "abc"}, 422, "image"),
    ("http url", {"image": _img("http://example.com/a.jpg", "url")}, 400, "image"),
    ("loopback url", {"image": _img("https://127.0.0.1/a.jpg", "url")}, 400, "image"),
    ("decimal loopback", {"image": _img("https://2130706433/a.jpg", "url")}, 400, "image"),
    (
        "metadata url",
        {"image": _img("https://169.254.169.254/latest/meta-data", "url")},
        400,
        "image",
    ),
    ("ipv6 loopback", {"image": _img("https://[::1]/a.jpg", "url")}, 400, "image"),
    ("file url", {"image": _img("file:///etc/passwd", "url")}, 400, "image"),
]

SEGMENT_CASES = [
    ("neither image nor id", {"prompts": [POINT]}, 422, "image_id"),
    ("unknown image_id", {"image_id": "never-embedded", "prompts": [POINT]}, 404, "not in cache"),
    ("prompts is a string", {"image": GOOD, "prompts": "abc"}, 422, "prompts"),
    ("points as pairs", {"image": GOOD, "prompts": [{"points": [[1, 2]]}]}, 422, "points"),
    (
        "box without width",
        {"image": GOOD, "prompts": [{"box": {"x": 1, "y": 2, "height": 3}}]},
        422,
        "width",
    ),
    (
        "negative box width",
        {"image": GOOD, "prompts": [{"box": {"x": 1, "y": 2, "width": -3, "height": 3}}]},
        422,
        "width",
    ),
    (
        "huge coordinate",
        {"image": GOOD, "prompts": [{"points": [{"x": 1e300, "y": 1}]}]},
        422,
        "coordinates",
    ),
    ("too many prompts", {"image": GOOD, "prompts": [POINT] * 65}, 422, "limit"),
    (
        "too many points",
        {"image": GOOD, "prompts": [{"points": [POINT["points"][0]] * 65}]},
        422,
        "limit",
    ),
    ("bad format", {"image": GOOD, "prompts": [POINT], "format": "png"}, 422, "format"),
    (
        "mask_input wrong shape",
        {"image": GOOD, "prompts": [POINT], "mask_input": [[1.0, 2.0]]},
        400,
        "mask_input",
    ),
    (
        "mask_input not numeric",
        {"image": GOOD, "prompts": [POINT], "mask_input": [["a"]]},
        400,
        "mask_input",
    ),
]


ROUTE_CASES = [("/sam2/embed_image", *c) for c in EMBED_CASES] + [
    ("/sam2/segment_image", *c) for c in SEGMENT_CASES
]


@pytest.mark.parametrize(
    ("route", "name", "body", "status", "word"), ROUTE_CASES, ids=[c[1] for c in ROUTE_CASES]
)
def test_bad_input_gets_its_4xx(
    client, route: str, name: str, body: dict, status: int, word: str
) -> None:  # type: ignore[no-untyped-def]
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    assert word in r.json()["message"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"[1, 2]", 422),
        (b'"just a string"', 422),
        (b'{"image_id": "x", "prompts": [{"points": [{"x": NaN, "y": 1}]}]}', 422),
        (b'{"image_id": "x", "prompts": [{"points": [{"x": Infinity, "y": 1}]}]}', 422),
        (b"\xff\xfe garbage", 400),
    ],
)
def test_raw_bodies(client, raw: bytes, status: int) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/sam2/segment_image", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.json()["message"]


def test_oversize_body_is_413(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=10_000)
    r = client.post("/sam2/embed_image", json={"image": GOOD})
    assert r.status_code == 413 and "body" in r.json()["message"]


def test_evicted_image_id_is_404(make_client) -> None:  # type: ignore[no-untyped-def]
    probe = make_client()
    probe.post("/sam2/embed_image", json={"image": GOOD})
    per_image = probe.get("/info").json()["cache"]["bytes"]
    client = make_client(cache_bytes=int(per_image * 1.5))  # room for one embedding
    first = client.post("/sam2/embed_image", json={"image": GOOD, "image_id": "a"}).json()
    other = {"type": "base64", "value": encode_image(photos()["coffee"])}
    client.post("/sam2/embed_image", json={"image": other, "image_id": "b"})
    r = client.post("/sam2/segment_image", json={"image_id": first["image_id"], "prompts": [POINT]})
    assert r.status_code == 404 and "send the image" in r.json()["message"]
    assert client.post("/sam2/segment_image", json={"image_id": "b"}).status_code == 200


def test_server_keeps_serving_after_every_error(client) -> None:  # type: ignore[no-untyped-def]
    for _, body, _, _ in EMBED_CASES + SEGMENT_CASES:
        client.post("/sam2/segment_image", json=body)
        client.post("/sam2/embed_image", content=json.dumps(body).encode()[:7])
    assert client.get("/healthz").status_code == 200
    r = client.post("/sam2/segment_image", json={"image": GOOD, "prompts": [POINT]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
