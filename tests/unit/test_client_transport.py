"""The HTTP clients on a mock transport: the exact request JSON, api_key, typed errors, and
bounded retries of a 503 that carries Retry-After. Sync and async share one table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from sam2serve.client import (
    AsyncSam2Client,
    BadRequestError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    Sam2Client,
    Sam2ConnectionError,
    Sam2ServerError,
    Sam2TimeoutError,
    TooManyRequestsError,
    UnauthorizedError,
    UnavailableError,
)
from sam2serve.media.postprocess import encode_npz, mask_to_polygons, mask_to_rle

RGB = np.zeros((20, 30, 3), np.uint8)
RGB[5:15, 10:20] = 200
MASK = RGB[:, :, 0] > 0
RLE_ANSWER = {"predictions": [{"masks": mask_to_rle(MASK), "confidence": 0.9, "format": "rle"}]}


class Recorder:
    """A mock server: answers from a list (the last one repeats) and records requests."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers) or [httpx.Response(200, json=RLE_ANSWER)]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request) if callable(answer) else answer

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.requests[-1].content)


def run(kind: str, recorder: Recorder, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call `method` on a sync or async client over `recorder`; sleeps are recorded, not slept."""
    client_kwargs = kwargs.pop("client_kwargs", {})
    sleeps: list[float] = []
    if kind == "sync":
        client = Sam2Client(transport=httpx.MockTransport(recorder), **client_kwargs)
        client._sleep = sleeps.append
        with client:
            return getattr(client, method)(*args, **kwargs), sleeps

    async def go() -> Any:
        client = AsyncSam2Client(transport=httpx.MockTransport(recorder), **client_kwargs)

        async def fake_sleep(s: float) -> None:
            sleeps.append(s)

        client._sleep = fake_sleep
        async with client:
            return await getattr(client, method)(*args, **kwargs), sleeps

    return asyncio.run(go())


KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


@KINDS
def test_segment_request_json_with_xyxy_boxes_as_centers(kind: str) -> None:
    rec = Recorder()
    result, _ = run(
        kind,
        rec,
        "segment_image",
        RGB,
        points=[(12, 8), (1, 2, False)],
        boxes=[(10, 20, 110, 70), (0, 0, 3, 5)],
        model="hiera_small",
        multimask_output=False,
        client_kwargs={"api_key": "k-123"},
    )
    req = rec.requests[0]
    assert req.method == "POST" and req.url.path == "/sam2/segment_image"
    assert req.url.params["api_key"] == "k-123"
    assert str(req.url).startswith("http://127.0.0.1:9001/")
    body = rec.body
    assert body["image"]["type"] == "base64"
    assert body["prompts"] == {
        "prompts": [
            {
                # (10, 20, 110, 70) -> centre ((10+110)/2, (20+70)/2), 100 x 50, by hand
                "box": {"x": 60.0, "y": 45.0, "width": 100, "height": 50},
                "points": [
                    {"x": 12, "y": 8, "positive": True},
                    {"x": 1, "y": 2, "positive": False},
                ],
            },
            {"box": {"x": 1.5, "y": 2.5, "width": 3, "height": 5}},
        ]
    }
    assert body["sam2_version_id"] == "hiera_small"
    assert body["multimask_output"] is False and body["format"] == "rle"
    assert "api_key" not in body
    np.testing.assert_array_equal(result[0].mask, MASK)
    assert result.prompts == body["prompts"]["prompts"]


@KINDS
@pytest.mark.parametrize(("fmt", "wire"), [("rle", "rle"), ("json", "json"), ("polygon", "json")])
def test_formats_on_the_wire(kind: str, fmt: str, wire: str) -> None:
    answer = {"predictions": [{"masks": mask_to_polygons(MASK), "confidence": 0.5}], "time": 0.1}
    rec = Recorder(httpx.Response(200, json=answer if wire == "json" else RLE_ANSWER))
    result, _ = run(kind, rec, "segment_image", RGB, points=(12, 8), format=fmt)
    assert rec.body["format"] == wire
    np.testing.assert_array_equal(result[0].mask, MASK)  # polygons filled with the array's size


@KINDS
def test_binary_format_parses_the_npz(kind: str) -> None:
    npz = encode_npz(np.where(MASK, 1.0, -1.0)[None], np.zeros((1, 8, 8)))
    rec = Recorder(
        httpx.Response(200, content=npz, headers={"content-type": "application/octet-stream"})
    )
    result, _ = run(kind, rec, "segment_image", image_id="img-1", format="binary")
    assert rec.body == {"multimask_output": True, "format": "binary", "image_id": "img-1"}
    np.testing.assert_array_equal(result[0].mask, MASK)
    assert result[0].confidence is None


@KINDS
def test_embed_then_segment_by_id_remembers_the_size_for_polygons(kind: str) -> None:
    polygons = {"predictions": [{"masks": mask_to_polygons(MASK), "confidence": 0.5}]}
    rec = Recorder(
        httpx.Response(200, json={"image_id": "cup", "time": 0.5}),
        httpx.Response(200, json=polygons),
    )

    if kind == "sync":
        with Sam2Client(transport=httpx.MockTransport(rec)) as client:
            embedded = client.embed_image(RGB, image_id="cup", model="hiera_tiny")
            result = client.segment_image(image_id="cup", points=[(12, 8)], format="json")
    else:

        async def go() -> tuple:
            async with AsyncSam2Client(transport=httpx.MockTransport(rec)) as client:
                e = await client.embed_image(RGB, image_id="cup", model="hiera_tiny")
                r = await client.segment_image(image_id="cup", points=[(12, 8)], format="json")
                return e, r

        embedded, result = asyncio.run(go())
    first = json.loads(rec.requests[0].content)
    assert rec.requests[0].url.path == "/sam2/embed_image"
    assert first["image_id"] == "cup" and first["sam2_version_id"] == "hiera_tiny"
    assert embedded.image_id == "cup" and embedded.time == 0.5
    assert "image" not in rec.body and rec.body["image_id"] == "cup"
    np.testing.assert_array_equal(result[0].mask, MASK)
    with pytest.raises(ValueError, match="annotate"):
        result.annotate()  # made from an image_id: no pixels to draw on


@KINDS
def test_url_images_go_as_url(kind: str) -> None:
    rec = Recorder(httpx.Response(200, json={"image_id": "x", "time": 0.0}))
    run(kind, rec, "embed_image", "https://example.com/cat.jpg")
    assert rec.body["image"] == {"type": "url", "value": "https://example.com/cat.jpg"}


ERROR_CASES = [
    (400, BadRequestError, {"message": "image: not an image", "field": "image"}),
    (401, UnauthorizedError, {"message": "an API key is required", "field": "api_key"}),
    (404, NotFoundError, {"message": "image_id 'a' is not in cache: send the image"}),
    (409, ConflictError, {"message": "conflict"}),
    (413, PayloadTooLargeError, {"message": "request body is over 16 bytes"}),
    (422, InvalidRequestError, {"message": "prompts: bad"}),
    (429, TooManyRequestsError, {"message": "slow down"}),
    (500, Sam2ServerError, {"message": "internal server error"}),
    (503, UnavailableError, {"message": "weights for x are not available"}),
    (404, NotFoundError, {"detail": "Not Found"}),  # a FastAPI-default server
]


@KINDS
@pytest.mark.parametrize(("status", "cls", "body"), ERROR_CASES)
def test_errors_are_typed_and_keep_the_server_message(
    kind: str, status: int, cls: type, body: dict
) -> None:
    rec = Recorder(httpx.Response(status, json=body))
    with pytest.raises(cls) as info:
        run(kind, rec, "embed_image", RGB)
    err = info.value
    assert type(err) is cls and err.status == status
    assert err.message == body.get("message", body.get("detail"))
    assert err.field == body.get("field") and err.body == body
    assert str(err) == f"{status}: {err.message}"
    assert len(rec.requests) == 1  # never retried


@KINDS
def test_non_json_error_body(kind: str) -> None:
    rec = Recorder(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(Sam2ServerError, match="Bad Gateway") as info:
        run(kind, rec, "embed_image", RGB)
    assert info.value.status == 502 and info.value.body is None


def _busy(retry_after: str | None, status: int = 503) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"message": "server busy"}, headers=headers)


@KINDS
@pytest.mark.parametrize("status", [503, 429])  # busy, or this key over its share
def test_503_with_retry_after_is_retried_then_succeeds(kind: str, status: int) -> None:
    ok = httpx.Response(200, json={"image_id": "a", "time": 0})
    rec = Recorder(_busy("1", status), _busy("2", status), ok)
    result, sleeps = run(kind, rec, "embed_image", RGB)
    assert result.image_id == "a"
    assert len(rec.requests) == 3 and sleeps == [1.0, 2.0]
    assert rec.requests[0].content == rec.requests[2].content  # same request again


@KINDS
def test_retries_are_bounded_and_waits_capped(kind: str) -> None:
    rec = Recorder(_busy("120"))
    with pytest.raises(UnavailableError) as info:
        run(
            kind,
            rec,
            "segment_image",
            RGB,
            client_kwargs={"max_retries": 2, "max_retry_wait": 5},
        )
    assert len(rec.requests) == 3 and info.value.retry_after == 120
    assert info.value.message == "server busy"


@KINDS
def test_503_without_retry_after_is_not_retried(kind: str) -> None:
    rec = Recorder(_busy(None))
    with pytest.raises(UnavailableError) as info:
        run(kind, rec, "embed_image", RGB)
    assert len(rec.requests) == 1 and info.value.retry_after is None


@KINDS
def test_http_date_retry_after(kind: str) -> None:
    rec = Recorder(
        _busy("Wed, 21 Oct 2015 07:28:00 GMT"), httpx.Response(200, json=RLE_ANSWER)
    )  # a date in the past: retry at once
    _, sleeps = run(kind, rec, "segment_image", RGB)
    assert sleeps == [0.0]


def _raise(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@KINDS
@pytest.mark.parametrize(
    ("exc", "cls", "words"),
    [
        (httpx.ConnectError("Connection refused"), Sam2ConnectionError, "cannot reach"),
        (httpx.ReadTimeout("timed out"), Sam2TimeoutError, "timeout"),
    ],
)
def test_transport_failures_are_typed(kind: str, exc: Exception, cls: type, words: str) -> None:
    with pytest.raises(cls, match=words):
        run(kind, Recorder(_raise(exc)), "embed_image", RGB)


def test_bad_arguments_fail_before_any_request() -> None:
    rec = Recorder()
    with Sam2Client(transport=httpx.MockTransport(rec)) as client:
        with pytest.raises(ValueError, match="format"):
            client.segment_image(RGB, format="png")
        with pytest.raises(ValueError, match="image_id"):
            client.segment_image(points=[(1, 2)])
        with pytest.raises(ValueError, match="corner box"):
            client.segment_image(RGB, boxes=[(50, 50, 10, 10)])
    assert rec.requests == []


def test_options_go_on_the_wire() -> None:
    rec = Recorder()
    with Sam2Client("http://sam.example:1234/", transport=httpx.MockTransport(rec)) as client:
        client.segment_image(
            RGB,
            image_id="mine",
            mask_input=np.zeros((1, 4, 4)),
            save_logits_to_cache=True,
            load_logits_from_cache=True,
            polygon_holes=True,
        )
    assert str(rec.requests[0].url) == "http://sam.example:1234/sam2/segment_image"
    body = rec.body
    assert body["image_id"] == "mine" and body["mask_input"] == [[[0.0] * 4] * 4]
    assert body["save_logits_to_cache"] and body["load_logits_from_cache"]
    assert body["polygon_holes"] and "prompts" not in body
    assert "api_key" not in rec.requests[0].url.params
