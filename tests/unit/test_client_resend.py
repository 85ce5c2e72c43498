"""The SDK re-sends an embedded image once when a server answers 404 for an id-only
segment (evicted id, or a replica that never had it), and can be told not to."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest

from sam2serve.client import AsyncSam2Client, NotFoundError, Sam2Client
from sam2serve.media.postprocess import mask_to_rle

RGB = np.zeros((20, 30, 3), np.uint8)
RGB[5:15, 10:20] = 200
ANSWER = {
    "predictions": [{"masks": mask_to_rle(RGB[:, :, 0] > 0), "confidence": 0.9, "format": "rle"}]
}


class ForgetfulServer:
    """Embeds answer 200; an id-only segment answers 404; a segment with the image, 200."""

    def __init__(self) -> None:
        self.segments: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path.endswith("embed_image"):
            return httpx.Response(200, json={"image_id": body.get("image_id", "h"), "time": 0})
        self.segments.append(body)
        if "image" not in body:
            return httpx.Response(404, json={"message": "not in cache: send the image"})
        return httpx.Response(200, json=ANSWER)


def run(client_cls: type, resend: bool, server: ForgetfulServer):  # type: ignore[no-untyped-def]
    if client_cls is Sam2Client:
        with Sam2Client(transport=httpx.MockTransport(server), resend_on_miss=resend) as c:
            c.embed_image(RGB, image_id="img")
            return c.segment_image(image_id="img", points=(12, 8))

    async def scenario():  # type: ignore[no-untyped-def]
        transport = httpx.MockTransport(server)
        async with AsyncSam2Client(transport=transport, resend_on_miss=resend) as c:
            await c.embed_image(RGB, image_id="img")
            return await c.segment_image(image_id="img", points=(12, 8))

    return asyncio.run(scenario())


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
def test_404_on_id_only_segment_resends_the_image_once(client_cls: type) -> None:
    server = ForgetfulServer()
    result = run(client_cls, True, server)
    assert np.array_equal(result.masks[0], RGB[:, :, 0] > 0)
    first, second = server.segments
    assert "image" not in first
    assert second["image_id"] == "img" and second["image"]["type"] == "base64"
    assert {k: v for k, v in second.items() if k != "image"} == first


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
def test_opt_out_raises_not_found(client_cls: type) -> None:
    server = ForgetfulServer()
    with pytest.raises(NotFoundError):
        run(client_cls, False, server)
    assert len(server.segments) == 1


def test_unknown_id_is_not_resent() -> None:
    server = ForgetfulServer()
    with Sam2Client(transport=httpx.MockTransport(server)) as c, pytest.raises(NotFoundError):
        c.segment_image(image_id="never-embedded", points=(1, 1))
    assert len(server.segments) == 1
