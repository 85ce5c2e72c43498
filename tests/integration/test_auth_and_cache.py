"""Auth (body, query, Bearer), namespace isolation, id/content binding, single-flight."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sam2serve.store.local import IdKey
from tests.conftest import encode_image, photos

A = {"type": "base64", "value": encode_image(photos()["coffee"])}
B = {"type": "base64", "value": encode_image(photos()["chelsea"])}
POINT = {"points": [{"x": 120, "y": 90, "positive": True}]}


@pytest.fixture
def keyed(make_client):  # type: ignore[no-untyped-def]
    return make_client(api_keys=["key-one", "key-two"])


@pytest.mark.parametrize(
    ("how", "status"),
    [("none", 401), ("body", 200), ("query", 200), ("bearer", 200), ("wrong", 401)],
)
def test_key_locations(keyed, how: str, status: int) -> None:  # type: ignore[no-untyped-def]
    body: dict = {"image": A}
    params, headers = {}, {}
    if how == "body":
        body["api_key"] = "key-one"
    elif how == "query":
        params["api_key"] = "key-two"
    elif how == "bearer":
        headers["Authorization"] = "Bearer key-one"
    elif how == "wrong":
        body["api_key"] = "key-three"
    r = keyed.post("/sam2/embed_image", json=body, params=params, headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert "api_key" in r.json()["message"] and "key-three" not in r.text


def test_namespaces_are_isolated(keyed) -> None:  # type: ignore[no-untyped-def]
    r = keyed.post("/sam2/embed_image", json={"image": A, "image_id": "mine", "api_key": "key-one"})
    assert r.status_code == 200
    ok = {"image_id": "mine", "prompts": [POINT]}
    assert keyed.post("/sam2/segment_image", json={**ok, "api_key": "key-one"}).status_code == 200
    other = keyed.post("/sam2/segment_image", json={**ok, "api_key": "key-two"})
    assert other.status_code == 404


def test_same_id_new_pixels_never_answers_with_old_image(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/sam2/embed_image", json={"image": A, "image_id": "x"})
    client.post("/sam2/embed_image", json={"image": B, "image_id": "x"})
    by_id = client.post(
        "/sam2/segment_image", json={"image_id": "x", "prompts": [POINT], "format": "rle"}
    ).json()
    fresh_b = client.post(
        "/sam2/segment_image", json={"image": B, "prompts": [POINT], "format": "rle"}
    ).json()
    assert by_id["predictions"] == fresh_b["predictions"]
    assert by_id["predictions"][0]["masks"]["size"] == list(photos()["chelsea"].shape[:2])
    # segment with image + the old id rebinds too
    again = client.post(
        "/sam2/segment_image",
        json={"image": A, "image_id": "x", "prompts": [POINT], "format": "rle"},
    ).json()
    assert again["predictions"][0]["masks"]["size"] == list(photos()["coffee"].shape[:2])


def test_concurrent_embeds_of_one_image_run_the_encoder_once(tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    from sam2serve.image.schema import EmbedRequest
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services
    from tests.conftest import tiny_settings

    service = build_services(tiny_settings(tiny_weights_dir), registry_with_test_model()).images

    async def scenario() -> list[str]:
        runtime = await service.pool.get(service.spec_for(None))
        calls = []
        original = runtime.embed

        def counting(rgb: np.ndarray):  # type: ignore[no-untyped-def]
            calls.append(1)
            return original(rgb)

        runtime.embed = counting  # type: ignore[method-assign]
        request = EmbedRequest(image=A)
        results = await asyncio.gather(*(service.embed(request, "public") for _ in range(8)))
        assert len(calls) == 1
        await service.aclose()
        return [r.image_id for r in results]

    ids = asyncio.run(scenario())
    assert len(set(ids)) == 1


def test_micro_batched_embeds_equal_single_embeds(tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    """embed_batch_size > 1 (the default on CUDA): concurrent embeds of different images
    run as one encoder call and give the same features as one-by-one embeds."""
    import torch

    from sam2serve.image.schema import EmbedRequest
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services
    from tests.conftest import tiny_settings

    settings = tiny_settings(tiny_weights_dir, runtime="torch", embed_batch_size=4)
    service = build_services(settings, registry_with_test_model()).images
    images = [{"type": "base64", "value": encode_image(rgb)} for rgb in photos().values()]

    async def scenario() -> None:
        spec = service.spec_for(None)
        requests = [EmbedRequest(image=image) for image in images]
        results = await asyncio.gather(*(service.embed(r, "public") for r in requests))
        assert service.embedders.batcher(spec.model_id).batches == [3]
        runtime = await service.pool.get(spec)
        for result, rgb in zip(results, photos().values(), strict=True):
            _, batched = service.store.local.lookup(IdKey("public", spec.model_id, result.image_id))
            single = runtime.embed(rgb)
            torch.testing.assert_close(batched.image_embed, single.image_embed, atol=1e-4, rtol=0)
            for b, s in zip(batched.high_res, single.high_res, strict=True):
                torch.testing.assert_close(b, s, atol=1e-4, rtol=0)
        await service.aclose()

    asyncio.run(scenario())


def test_click_on_cached_image_does_not_wait_for_another_embed(tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    """While a slow embed of image B runs, a click on already-embedded image A completes
    (ordering, not timing: the click finishes while B's embed is still in flight)."""
    import threading

    from sam2serve.image.schema import EmbedRequest, SegmentRequest
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services
    from tests.conftest import tiny_settings

    service = build_services(tiny_settings(tiny_weights_dir), registry_with_test_model()).images
    release = threading.Event()

    async def scenario() -> None:
        runtime = await service.pool.get(service.spec_for(None))
        first = await service.embed(EmbedRequest(image=A), "public")
        original = runtime.embed

        def held_embed(rgb: np.ndarray):  # type: ignore[no-untyped-def]
            release.wait(30)
            return original(rgb)

        runtime.embed = held_embed  # type: ignore[method-assign]
        slow = asyncio.create_task(service.embed(EmbedRequest(image=B), "public"))
        await asyncio.sleep(0.05)
        click = SegmentRequest(image_id=first.image_id, prompts=[POINT], format="rle")
        answer = await asyncio.wait_for(service.segment(click, "public"), timeout=20)
        assert len(answer.predictions) == 1
        assert not slow.done()  # B's embed is still held: the click did not queue behind it
        release.set()
        await slow
        await service.aclose()

    try:
        asyncio.run(scenario())
    finally:
        release.set()
