"""The HTTP layer in process: JSON 500s counted and logged with a request id, a valid and
complete OpenAPI document, admission before parsing, cache-budget embeds, /info and
/metrics with keys, cache counters."""

from __future__ import annotations

import json
import logging
import time

import pytest
from openapi_spec_validator import validate

from tests.conftest import encode_image

ERROR_CODES = ("400", "401", "404", "413", "422", "503")


def _image(size: int = 64) -> dict:
    import numpy as np

    rgb = np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return {"type": "base64", "value": encode_image(rgb)}


def test_a_500_is_json_with_a_request_id_counted_and_logged(make_client, caplog) -> None:
    client = make_client(replica_name="r1")

    @client.app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.INFO, logger="sam2serve"):
        r = client.get("/boom", headers={"X-Request-ID": "trace-123"})
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "trace-123"
    assert r.headers["x-sam2serve-replica"] == "r1"  # also on a 500
    assert r.json()["request_id"] == "trace-123" and "trace-123" in r.json()["message"]
    assert "a bug" not in r.text  # no internals to the client
    logged = [rec for rec in caplog.records if "trace-123" in rec.getMessage()]
    assert any(rec.exc_info for rec in logged)  # the traceback, under the id
    assert any("GET /boom 500" in rec.getMessage() for rec in logged)  # access log
    metrics = client.get("/metrics").text
    assert 'sam2serve_requests_total{route="/boom",status="500"} 1.0' in metrics
    assert 'sam2serve_request_seconds_count{route="/boom"} 1.0' in metrics


def test_request_ids_are_generated_and_unsafe_ones_replaced(client) -> None:
    a, b = client.get("/healthz"), client.get("/healthz", headers={"X-Request-ID": "bad id\x7f"})
    assert len(a.headers["x-request-id"]) == 32 and a.headers["x-request-id"] != "bad id"
    assert b.headers["x-request-id"] != "bad id\x7f"


def test_405_is_json_with_allow(client) -> None:
    r = client.delete("/sam2/embed_image")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["x-sam2serve-replica"]  # every answer names its replica
    assert "not allowed" in r.json()["message"]


def _resolve(doc: dict, ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, ref
        node = node[part]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_openapi_is_valid_and_complete(client) -> None:
    doc = client.get("/openapi.json").json()
    validate(doc)  # openapi-spec-validator: OpenAPI 3.1 structure and schemas
    refs = _refs(doc)
    assert refs and "$defs" not in json.dumps(doc)
    for ref in refs:
        _resolve(doc, ref)
    schemas = doc["components"]["schemas"]
    for name in (
        "EmbedRequest",
        "SegmentRequest",
        "EverythingRequest",
        "ImageInput",
        "Point",
        "Box",
        "Prompt",
    ):
        schema = schemas[name]
        assert schema.get("examples"), name
        for field, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    for path in ("/sam2/embed_image", "/sam2/segment_image", "/sam2/segment_everything"):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["example"]
        for code in ERROR_CODES:
            content = op["responses"][code]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (path, code)
        assert "Retry-After" in op["responses"]["503"]["headers"]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_openapi_examples_work(client) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/sam2/embed_image", "/sam2/segment_image", "/sam2/segment_everything"):
        example = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        r = client.post(path, json=example["example"])
        assert r.status_code == 200, (path, r.text)


def test_full_embed_lane_refuses_big_bodies_before_parsing(client, monkeypatch) -> None:
    from sam2serve.api import body

    admission = client.app.state.admission
    assert admission.slots == client.app.state.services.images.embed_lane.capacity
    parsed: list[int] = []
    monkeypatch.setattr(body, "parse_json", lambda raw: parsed.append(len(raw)))
    admission.in_use = admission.slots  # every slot taken
    big = json.dumps({"image": {"type": "base64", "value": "A" * 4_000_000}})
    t0 = time.perf_counter()
    r = client.post("/sam2/embed_image", content=big, headers={"content-type": "application/json"})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert "busy" in r.json()["message"] and parsed == []
    r = client.post(
        "/sam2/segment_image", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 503 and parsed == []
    r = client.post(
        "/sam2/segment_everything", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 503 and parsed == []
    monkeypatch.undo()
    # a click (small body, image_id only) is not an image request: it is not refused
    r = client.post("/sam2/segment_image", json={"image_id": "nope"})
    assert r.status_code == 404
    admission.in_use = 0
    assert admission.refused == 3
    print(f"refused a 4 MB body in {elapsed * 1e3:.1f} ms")


def test_slots_are_released_after_each_request(client) -> None:
    for _ in range(3):
        assert client.post("/sam2/embed_image", json={"image": _image()}).status_code == 200
        assert client.post("/sam2/embed_image", json={"image": {"type": "x"}}).status_code == 422
    assert client.app.state.admission.in_use == 0


def test_embed_over_the_cache_budget_is_503_naming_the_setting(make_client) -> None:
    client = make_client(cache_bytes=1000)
    r = client.post("/sam2/embed_image", json={"image": _image()})
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert "SAM2SERVE_CACHE_BYTES" in r.json()["message"]
    # segmenting with the image inline still works: nothing has to be kept
    seg = {"image": _image(), "prompts": [{"points": [{"x": 5, "y": 5}]}]}
    assert client.post("/sam2/segment_image", json=seg).status_code == 200


def test_info_and_metrics_with_keys(make_client) -> None:
    client = make_client(api_keys="k1")
    public = client.get("/info").json()
    assert public["auth"] is True and public["models"] and "detail" in public
    assert not {"device", "cache", "rss_bytes", "runtimes", "shared_tier"} & set(public)
    assert public["replica"]
    assert public["sam3"]["limits"] and "text_cache" not in public["sam3"]
    full = client.get("/info", headers={"Authorization": "Bearer k1"}).json()
    assert {"device", "cache", "rss_bytes", "shared_tier"} <= set(full)
    assert "text_cache" in full["sam3"]
    assert client.get("/metrics").status_code == 200  # open by default for scrapers
    locked = make_client(api_keys="k1", metrics_require_key=True)
    assert locked.get("/metrics").status_code == 401
    assert locked.get("/metrics", params={"api_key": "k1"}).status_code == 200
    assert client.get("/docs").status_code == 200 and client.get("/openapi.json").is_success


@pytest.mark.parametrize("name", ["hits", "misses", "evictions"])
def test_cache_totals_are_counters(client, name: str) -> None:
    client.post("/sam2/embed_image", json={"image": _image()})
    client.post("/sam2/embed_image", json={"image": _image()})
    text = client.get("/metrics").text
    assert f"# TYPE sam2serve_cache_{name}_total counter" in text
    assert f"sam2serve_cache_{name} " not in text  # no gauge of the same name
    value = {"hits": 1.0, "misses": 1.0, "evictions": 0.0}[name]
    assert f"sam2serve_cache_{name}_total {value}" in text
