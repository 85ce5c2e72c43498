"""The concept-output cache behind /sam3/concept_segment, on SAM 3's tiny architecture with
seeded random weights: a repeated prompt on a cached image skips the runtime's `concept`,
answers exactly what a server without the cache answers, and never crosses tenants,
images or runtimes."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from sam2serve.testing import SAM3_TEST_MODEL_ID
from tests.conftest import encode_image, photos

RGB = photos()["coffee"]
IMAGE = {"type": "base64", "value": encode_image(RGB)}
OTHER = {"type": "base64", "value": encode_image(photos()["chelsea"])}
BOX = {"x0": 40, "y0": 30, "x1": 300, "y1": 200}


@pytest.fixture(scope="module")
def cached(make_sam3_client):  # type: ignore[no-untyped-def]
    return make_sam3_client()


@pytest.fixture(scope="module")
def uncached(make_sam3_client):  # type: ignore[no-untyped-def]
    return make_sam3_client(sam3={"concept_cache_entries": 0})


def _runtime(client):  # type: ignore[no-untyped-def]
    services = client.app.state.services
    spec = services.images.models.resolve_sam3(SAM3_TEST_MODEL_ID)
    return client.portal.call(services.images.pool.get, spec)


def _counted(client, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[Any]:  # type: ignore[no-untyped-def]
    """Calls to the client's runtime `concept` from now on (each call's text phrase)."""
    runtime = _runtime(client)
    concept = runtime.concept
    calls: list[Any] = []

    def counting(features, text, boxes, labels):  # type: ignore[no-untyped-def]
        calls.append(text.phrase)
        time.sleep(delay)
        return concept(features, text, boxes, labels)

    monkeypatch.setattr(runtime, "concept", counting)
    return calls


def _ask(client, headers: dict | None = None, **body: Any) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/sam3/concept_segment", json={"image": IMAGE, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["prompt_results"]


PROMPTS = [{"text": "cup"}, {"boxes": [BOX]}, {"text": "cup", "boxes": [BOX], "box_labels": [0]}]


def _band(client) -> float:  # type: ignore[no-untyped-def]
    """A threshold the best three of the first prompt pass (random weights: a narrow band)."""
    (first, *_) = _ask(client, prompts=PROMPTS, output_prob_thresh=0.0, format="rle")
    return sorted(p["confidence"] for p in first["predictions"])[-3] - 1e-6


@pytest.mark.parametrize(
    ("variant", "thresholds"),
    [
        ({"format": "rle"}, (0.0,)),  # every query, masks exact
        ({"nms_iou_threshold": 0.3}, (0.0,)),  # NMS over all of them
        ({"format": "polygon"}, ("band",)),
        ({"format": "rle"}, (0.0, "band", 1.0)),  # per prompt
    ],
    ids=["rle", "nms", "polygon", "per-prompt"],
)
def test_a_repeated_prompt_answers_as_without_the_cache(  # type: ignore[no-untyped-def]
    cached, uncached, variant, thresholds, monkeypatch
) -> None:
    band = _band(cached)  # also fills the cache
    calls = _counted(cached, monkeypatch)
    picked = [band if t == "band" else t for t in thresholds]
    prompts = [{**p, "output_prob_thresh": t} for p, t in zip(PROMPTS, picked * 3, strict=False)]
    got = _ask(cached, prompts=prompts, **variant)
    assert calls == []  # all three prompts from the cache
    assert got == _ask(uncached, prompts=prompts, **variant)
    assert any(r["predictions"] for r in got)  # not vacuous


def test_the_second_identical_request_skips_the_concept_heads(cached, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = _counted(cached, monkeypatch)
    before = cached.app.state.services.sam3.concepts.describe()
    first = _ask(cached, prompts=[{"text": "a blue teapot"}], output_prob_thresh=0.0)
    second = _ask(cached, prompts=[{"text": "a blue teapot"}], output_prob_thresh=0.0)
    assert calls == ["a blue teapot"] and first == second
    after = cached.get("/info").json()["sam3"]["concept_cache"]
    assert (after["misses"], after["hits"]) == (before["misses"] + 1, before["hits"] + 1)
    assert 0 < after["bytes"] <= after["max_bytes"]


def test_concurrent_identical_requests_compute_once(cached, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = _counted(cached, monkeypatch, delay=0.5)  # the first stays in flight
    answers: list[Any] = []

    def ask() -> None:
        answers.append(_ask(cached, prompts=[{"text": "saucer"}], output_prob_thresh=0.0))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["saucer"] and answers[0] == answers[1] == answers[2]
    assert cached.app.state.services.sam3.concepts.describe()["computing"] == 0


def test_api_keys_never_share_an_entry(make_sam3_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    keyed = make_sam3_client(api_keys=["key-one", "key-two"])
    calls = _counted(keyed, monkeypatch)
    one, two = ({"Authorization": f"Bearer key-{k}"} for k in ("one", "two"))
    a = _ask(keyed, one, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    b = _ask(keyed, two, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    assert calls == ["cup", "cup"] and a == b  # same pixels, computed once per tenant
    kept = keyed.app.state.services.sam3.concepts.kept()
    assert sorted(k.image.namespace for k in kept) == sorted({k.image.namespace for k in kept})
    assert len(kept) == 2


def test_an_evicted_or_reembedded_image_is_computed_again(make_sam3_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    probe = make_sam3_client()
    size = probe.portal.call(_embed_size, probe)
    small = make_sam3_client(cache_bytes=int(size * 1.5 * 4 / 3) + 1)  # one SAM 3 image fits
    sam3 = small.app.state.services.sam3
    calls = _counted(small, monkeypatch)
    want = _ask(small, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    assert len(sam3.concepts) == 1
    r = small.post("/sam3/embed_image", json={"image": OTHER})  # evicts the coffee image
    assert r.status_code == 200, r.text
    small.get("/healthz")  # a turn of the loop: the features' finalizer ran
    assert len(sam3.concepts) == 0 and sam3.concepts.bytes_used == 0
    assert _ask(small, prompts=[{"text": "cup"}], output_prob_thresh=0.0) == want
    assert calls == ["cup", "cup"]  # re-embedded: computed again, same answer


async def _embed_size(client) -> int:  # type: ignore[no-untyped-def]
    images = client.app.state.services.images
    runtime = await images.pool.get(images.models.resolve_sam3(SAM3_TEST_MODEL_ID))
    return int(runtime.feature_nbytes)


def test_a_replaced_runtime_keeps_no_outputs(make_sam3_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    one_model = make_sam3_client(max_models=1)
    sam3 = one_model.app.state.services.sam3
    first = _runtime(one_model)
    _ask(one_model, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    assert len(sam3.concepts) == 1
    r = one_model.post("/sam2/embed_image", json={"image": IMAGE})  # unloads SAM 3
    assert r.status_code == 200, r.text
    calls = _counted(one_model, monkeypatch)  # loads a new SAM 3 runtime
    assert _runtime(one_model) is not first
    _ask(one_model, prompts=[{"text": "cup"}], output_prob_thresh=0.0)
    assert calls == ["cup"] and len(sam3.concepts) == 1


def test_cache_figures_need_a_key(make_sam3_client) -> None:  # type: ignore[no-untyped-def]
    keyed = make_sam3_client(api_keys=["k"])
    public = keyed.get("/info").json()["sam3"]
    assert "concept_cache" not in public and "text_cache" not in public
    full = keyed.get("/info", headers={"Authorization": "Bearer k"}).json()["sam3"]
    assert set(full["concept_cache"]) >= {"entries", "bytes", "hits", "misses", "max_bytes"}
    assert np.isfinite(full["concept_cache"]["max_bytes"])
