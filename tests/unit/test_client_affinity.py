"""The SDK's affinity header: embed, segment and segment-everything requests carry the image's
id in X-Sam2serve-Image-Id; without a caller-given id it is the content hash the server will
compute from the pixels it decodes (so the embed routes like the clicks that follow)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from sam2serve.client import AsyncSam2Client, Sam2Client
from sam2serve.media.decode import decode_image_bytes
from sam2serve.media.postprocess import mask_to_rle
from sam2serve.wire import IMAGE_ID_HEADER

RNG = np.random.default_rng(3)
RGB = RNG.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
RGBA = RNG.integers(0, 256, size=(24, 32, 4), dtype=np.uint8)
GRAY = RNG.integers(0, 256, size=(24, 32), dtype=np.uint8)
SEGMENT_ANSWER = {
    "predictions": [{"masks": mask_to_rle(RGB[:, :, 0] > 128), "confidence": 0.9, "format": "rle"}],
    "time": 0.0,
}


def _encoded(rgb: np.ndarray, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **save)
    return buf.getvalue()


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the server's pixels are (W, H)
    return _encoded(RGB, "JPEG", exif=exif.tobytes())


class RecordingServer:
    """Answers like a server; records each request's path, header and server-side id (the
    content hash of the pixels the server would decode, or the body's image_id)."""

    def __init__(self, decode: bool = True) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []
        self.decode = decode  # False: the images sent are not all images

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        server_id = body.get("image_id")
        image = body.get("image", {})
        if self.decode and server_id is None and image.get("type") == "base64":
            data = base64.b64decode(body["image"]["value"])
            server_id = decode_image_bytes(data, max_pixels=10**8).content_hash
        path = request.url.path.rsplit("/", 1)[-1]
        self.seen.append((path, request.headers.get(IMAGE_ID_HEADER), server_id))
        if path == "embed_image":
            return httpx.Response(200, json={"image_id": server_id or "h", "time": 0.0})
        if path == "segment_everything":
            return httpx.Response(200, json={"predictions": [], "time": 0.0})
        return httpx.Response(200, json=SEGMENT_ANSWER)


#: name -> (image, bgr); a Path is written (as a PNG of RGB) into the test's tmp_path
INPUTS: dict[str, tuple[Any, bool]] = {
    "numpy rgb": (RGB, False),
    "numpy bgr": (RGB, True),
    "numpy rgba": (RGBA, False),
    "numpy gray": (GRAY, False),
    "numpy bool": (GRAY > 100, False),
    "pil rgb": (Image.fromarray(RGB), False),
    "pil palette": (Image.fromarray(RGB).convert("P"), False),
    "pil cmyk": (Image.fromarray(RGB).convert("CMYK"), False),
    "png path": (Path("photo.png"), False),
    "jpeg bytes": (_encoded(RGB, "JPEG", quality=80), False),
    "jpeg rotated by exif": (_rotated_jpeg(), False),
}


def _run(
    client_cls: type, calls: Any, server: RecordingServer | None = None, **options: Any
) -> RecordingServer:
    server = server or RecordingServer()
    if client_cls is Sam2Client:
        with Sam2Client(transport=httpx.MockTransport(server), **options) as client:
            calls(client, lambda result: result)
        return server

    async def scenario() -> None:
        transport = httpx.MockTransport(server)
        async with AsyncSam2Client(transport=transport, **options) as client:
            pending: list[Any] = []
            calls(client, pending.append)
            for call in pending:
                await call

    asyncio.run(scenario())
    return server


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
@pytest.mark.parametrize("name", list(INPUTS))
def test_header_is_the_id_the_server_gives_the_image(
    client_cls: type, name: str, tmp_path: Path
) -> None:
    """No caller id: the embed's and a one-shot segment's header is the server's content
    hash of the pixels sent; the clicks after the embed carry the id it returned."""
    image, bgr = INPUTS[name]
    if isinstance(image, Path):
        image = tmp_path / image
        image.write_bytes(_encoded(RGB, "PNG"))

    def calls(client: Any, keep: Any) -> None:
        keep(client.embed_image(image, bgr=bgr))
        keep(client.segment_image(image, bgr=bgr, points=(3, 4)))
        keep(client.segment_everything(image, bgr=bgr, points_per_side=2))

    server = _run(client_cls, calls)
    assert [path for path, _, _ in server.seen] == [
        "embed_image",
        "segment_image",
        "segment_everything",
    ]
    for _, header, server_id in server.seen:
        assert server_id is not None
        assert header == server_id


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
def test_caller_id_goes_in_the_header_and_clicks_follow_the_embed(client_cls: type) -> None:
    def calls(client: Any, keep: Any) -> None:
        keep(client.embed_image(RGB, image_id="photo-1"))
        keep(client.segment_image(image_id="photo-1", points=(3, 4)))
        keep(client.segment_everything(image_id="photo-1", points_per_side=2))
        keep(client.segment_image(RGB, image_id="photo-2", points=(3, 4)))

    server = _run(client_cls, calls)
    assert [(header, server_id) for _, header, server_id in server.seen] == [
        ("photo-1", "photo-1"),
        ("photo-1", "photo-1"),
        ("photo-1", "photo-1"),
        ("photo-2", "photo-2"),
    ]


@pytest.mark.parametrize(
    ("image", "options"),
    [
        ("https://example.com/photo.jpg", {}),  # the server fetches it: no pixels here
        (b"not an image at all", {}),  # the server answers why (a 400), with no header
        (RGB, {"affinity_header": False}),  # turned off: no header, no decode
    ],
    ids=["url", "not an image", "turned off"],
)
@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
def test_no_header_where_the_id_is_unknown_or_turned_off(
    client_cls: type, image: Any, options: dict[str, Any]
) -> None:
    def calls(client: Any, keep: Any) -> None:
        keep(client.embed_image(image))

    server = _run(client_cls, calls, RecordingServer(decode=False), **options)
    assert [header for _, header, _ in server.seen] == [None]


def test_resend_after_a_404_keeps_the_header() -> None:
    """The re-sent request (image + id) routes like the id-only click it replaces."""
    headers: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        headers.append(request.headers.get(IMAGE_ID_HEADER))
        if request.url.path.endswith("embed_image"):
            return httpx.Response(200, json={"image_id": body["image_id"], "time": 0.0})
        if "image" not in body:
            return httpx.Response(404, json={"message": "not in cache: send the image"})
        return httpx.Response(200, json=SEGMENT_ANSWER)

    with Sam2Client(transport=httpx.MockTransport(answer)) as client:
        client.embed_image(RGB, image_id="img")
        client.segment_image(image_id="img", points=(3, 4))
    assert headers == ["img", "img", "img"]


def test_an_image_sent_again_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client remembers the hashes of the last images it decoded (bounded)."""
    import sam2serve.media.decode as decode
    from sam2serve.client.affinity import RouteIds

    decodes: list[int] = []
    real = decode.decode_image_bytes

    def counting(data: bytes, *, max_pixels: int):  # type: ignore[no-untyped-def]
        decodes.append(len(data))
        return real(data, max_pixels=max_pixels)

    monkeypatch.setattr(decode, "decode_image_bytes", counting)
    files = [_encoded(RGB, "PNG"), _encoded(RGB, "JPEG"), _encoded(RGBA, "PNG")]
    bodies = [{"image": {"type": "base64", "value": base64.b64encode(f).decode()}} for f in files]
    ids = RouteIds(max_entries=2)
    first = [ids(body) for body in bodies[:2]]
    assert [ids(body) for body in bodies[:2]] == first and len(decodes) == 2
    assert first[0] == real(files[0], max_pixels=10**8).content_hash
    ids(bodies[2])  # a third image: the oldest is forgotten
    assert len(decodes) == 3
    assert ids(bodies[0]) == first[0] and len(decodes) == 4
