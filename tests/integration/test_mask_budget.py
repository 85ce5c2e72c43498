"""The per-request output budget over HTTP (413 naming the budget and the fix, before any
mask is computed) and the one byte budget shared by the embedding and logits caches."""

from __future__ import annotations

import pytest

from tests.conftest import encode_image, photos

POINT = {"points": [{"x": 100, "y": 100, "positive": True}]}


@pytest.mark.parametrize(("prompts", "status"), [(1, 200), (2, 413), (0, 200)])
def test_mask_pixels_budget(make_client, prompts: int, status: int) -> None:  # type: ignore[no-untyped-def]
    rgb = photos()["astronaut"]  # 512 x 512 = 262,144 pixels
    client = make_client(max_mask_pixels=400_000)
    body = {
        "image": {"type": "base64", "value": encode_image(rgb)},
        "prompts": {"prompts": [POINT] * prompts},
        "format": "rle",
    }
    r = client.post("/sam2/segment_image", json=body)
    assert r.status_code == status, r.text
    if status == 413:
        message = r.json()["message"]
        assert "SAM2SERVE_MAX_MASK_PIXELS" in message and "400,000" in message
        assert "at most 1 prompts" in message and r.json()["field"] == "prompts"
    else:
        assert len(r.json()["predictions"]) == max(1, prompts)


def test_logits_share_the_cache_budget(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(cache_bytes=400 * 2**20, logits_cache_bytes=64 * 2**20)
    service = client.app.state.services.images
    assert service.store.logits.max_bytes == 64 * 2**20
    assert service.store.local.max_bytes + service.store.logits.max_bytes == 400 * 2**20
    small = make_client(cache_bytes=100 * 2**20).app.state.services.images  # at most a quarter
    assert small.store.logits.max_bytes == 25 * 2**20
