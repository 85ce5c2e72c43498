"""The affinity header X-Sam2serve-Image-Id on embed, segment and segment-everything: a copy
of the body's image_id for load balancers; the body stays authoritative, a header that names
another id is a 400 naming both (before any image work), a body without image_id takes any
well-formed header (a routing hint)."""

from __future__ import annotations

from typing import Any

import pytest

from sam2serve.wire import IMAGE_ID_HEADER
from tests.conftest import encode_image, photos

IMAGE = {"type": "base64", "value": encode_image(photos()["coffee"][:96, :128])}
POINT = {"points": [{"x": 30, "y": 20, "positive": True}]}
EVERYTHING = {"points_per_side": 2, "format": "rle"}

#: name -> (path, body); every body names image_id "img"
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "embed": ("/sam2/embed_image", {"image": IMAGE, "image_id": "img"}),
    "segment by id": ("/sam2/segment_image", {"image_id": "img", "prompts": POINT}),
    "segment with image": (
        "/sam2/segment_image",
        {"image": IMAGE, "image_id": "img", "prompts": POINT},
    ),
    "everything by id": ("/sam2/segment_everything", {"image_id": "img", **EVERYTHING}),
}


@pytest.fixture
def embedded(client):  # type: ignore[no-untyped-def]
    r = client.post("/sam2/embed_image", json={"image": IMAGE, "image_id": "img"})
    assert r.status_code == 200, r.text
    return client


@pytest.mark.parametrize("route", list(ROUTES))
def test_matching_header_is_served(embedded, route: str) -> None:  # type: ignore[no-untyped-def]
    path, body = ROUTES[route]
    r = embedded.post(path, json=body, headers={IMAGE_ID_HEADER: "img"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(IMAGE_ID_HEADER, "other")], "does not match the body's image_id"),
        ([(IMAGE_ID_HEADER, "bad id/with slash")], "is not an image id"),
        ([(IMAGE_ID_HEADER, "x" * 129)], "is not an image id"),
        ([(IMAGE_ID_HEADER, "img"), (IMAGE_ID_HEADER, "img")], "is sent 2 times"),
    ],
    ids=["other id", "not an id", "too long", "twice"],
)
@pytest.mark.parametrize("route", list(ROUTES))
def test_bad_header_is_a_400_naming_the_header(  # type: ignore[no-untyped-def]
    client, route: str, headers: list[tuple[str, str]], expected: str
) -> None:
    """Refused before any image work: nothing is decoded, embedded or looked up."""
    path, body = ROUTES[route]
    r = client.post(path, json=body, headers=headers)
    assert r.status_code == 400, r.text
    answer = r.json()
    assert answer["field"] == IMAGE_ID_HEADER
    assert expected in answer["message"]
    if expected.startswith("does not match"):
        assert (answer["header"], answer["image_id"]) == ("other", "img")
        assert "'other'" in answer["message"] and "'img'" in answer["message"]
    cache = client.get("/info").json()["cache"]
    assert (cache["entries"], cache["hits"], cache["misses"]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/sam2/embed_image", {"image": IMAGE}),
        ("/sam2/segment_image", {"image": IMAGE, "prompts": POINT}),
        ("/sam2/segment_everything", {"image": IMAGE, **EVERYTHING}),
    ],
    ids=["embed", "segment", "everything"],
)
def test_body_without_image_id_takes_the_header_as_a_hint(  # type: ignore[no-untyped-def]
    client, path: str, body: dict[str, Any]
) -> None:
    """The id is the content hash of the pixels, whatever the header says: a client whose
    hash differs (another decoder) loses locality, never the answer."""
    r = client.post(path, json=body, headers={IMAGE_ID_HEADER: "not-the-hash"})
    assert r.status_code == 200, r.text
    if path.endswith("embed_image"):
        assert r.json()["image_id"] != "not-the-hash"
    assert client.get("/info").json()["cache"]["entries"] == 1


def test_header_is_documented(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/sam2/embed_image", "/sam2/segment_image", "/sam2/segment_everything"):
        (param,) = [p for p in paths[path]["post"]["parameters"] if p["in"] == "header"]
        assert param["name"] == IMAGE_ID_HEADER and not param["required"]
