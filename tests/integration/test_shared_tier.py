"""Two replicas (two in-process apps) sharing one real redis-server: cross-replica clicks,
namespaces and id binding across replicas, logits, and every Redis fault degrading to
local-only without a client error."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from sam2serve.store import codec
from tests.conftest import encode_image, photos
from tests.helpers_redis import RedisProcess

COFFEE = {"type": "base64", "value": encode_image(photos()["coffee"])}
CHELSEA = {"type": "base64", "value": encode_image(photos()["chelsea"])}
CLICKS = [{"points": [{"x": 40 + 9 * i, "y": 30 + 7 * i, "positive": True}]} for i in range(20)]


@pytest.fixture
def redis_proc() -> Iterator[RedisProcess]:
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.close()


@pytest.fixture
def replicas(make_client, redis_proc):  # type: ignore[no-untyped-def]
    """Replica A, replica B (sharing Redis) and a single-process server without Redis."""

    def make(**extra: object):  # type: ignore[no-untyped-def]
        extra = {"runtime": "torch", **extra}
        shared = {"redis_url": redis_proc.url, "redis_retry_s": 0.5, **extra}
        a = make_client(replica_name="A", **shared)
        b = make_client(replica_name="B", **shared)
        solo = make_client(replica_name="solo", **extra)
        return a, b, solo

    return make


def segment(client, prompt, *, image=None, image_id=None, **extra):  # type: ignore[no-untyped-def]
    body = {"prompts": prompt, "format": "rle", **extra}
    if image is not None:
        body["image"] = image
    if image_id is not None:
        body["image_id"] = image_id
    return client.post("/sam2/segment_image", json=body)


def test_embed_on_a_then_twenty_clicks_on_b_equal_single_process(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, solo = replicas()
    assert a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"}).status_code == 200
    assert (
        solo.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"}).status_code == 200
    )
    for prompt in CLICKS:
        got = segment(b, prompt, image_id="img")
        assert got.status_code == 200, got.text
        assert got.headers["X-Sam2serve-Replica"] == "B"
        want = segment(solo, prompt, image_id="img").json()
        assert got.json()["predictions"] == want["predictions"]
    info = b.get("/info").json()
    assert info["replica"] == "B"
    assert info["shared_tier"]["counts"]["features.hit"] == 1  # fetched once, then local


def test_namespaces_hold_across_replicas(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = replicas(api_keys=["key-one", "key-two"])
    body = {"image": COFFEE, "image_id": "img", "api_key": "key-one"}
    assert a.post("/sam2/embed_image", json=body).status_code == 200
    other = segment(b, CLICKS[0], image_id="img", api_key="key-two")
    assert other.status_code == 404
    assert "send the image" in other.json()["message"]
    assert segment(b, CLICKS[0], image_id="img", api_key="key-one").status_code == 200


def test_id_rebound_elsewhere_never_answers_with_old_pixels(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, solo = replicas()
    a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "x"})
    assert segment(b, CLICKS[0], image_id="x").status_code == 200  # B now holds coffee
    a.post("/sam2/embed_image", json={"image": CHELSEA, "image_id": "x"})
    got = segment(b, CLICKS[0], image_id="x").json()
    want = segment(solo, CLICKS[0], image=CHELSEA).json()
    old = segment(solo, CLICKS[0], image=COFFEE).json()
    assert got["predictions"] == want["predictions"] != old["predictions"]


def test_same_image_on_two_replicas_embeds_once(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = replicas()
    a.post("/sam2/embed_image", json={"image": COFFEE})
    b.post("/sam2/embed_image", json={"image": COFFEE})
    assert a.get("/info").json()["cache"]["misses"] == 1
    tier_b = b.get("/info").json()["shared_tier"]["counts"]
    assert tier_b["features.hit"] == 1  # B took A's features instead of embedding


def test_saved_logits_are_shared(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b, solo = replicas()
    first = {"points": [{"x": 60, "y": 50, "positive": True}]}
    more = {"points": [*first["points"], {"x": 90, "y": 70, "positive": False}]}
    for server in (a, solo):
        server.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
        segment(server, first, image_id="img", save_logits_to_cache=True)
    got = segment(b, more, image_id="img", load_logits_from_cache=True).json()
    want = segment(solo, more, image_id="img", load_logits_from_cache=True).json()
    plain = segment(solo, more, image_id="img").json()
    assert got["predictions"] == want["predictions"] != plain["predictions"]


def _feature_key(redis_proc: RedisProcess) -> bytes:
    (key,) = redis_proc.client().keys("sam2serve:v1:f:*")
    return key


def _foreign(value: bytes) -> bytes:
    """The same value written for another model (checkpoint hash differs)."""
    tensors, header = codec.decode(
        value, "features", codec.Identity(*_ident(value)), header_content(value)
    )
    ident = codec.Identity(header["model_id"], "0" * 64, header["producer"])
    return codec.encode("features", ident, header["content_hash"], tensors, orig_hw=[1, 1])


def _ident(value: bytes) -> tuple[str, str, str]:
    header = _header(value)
    return header["model_id"], header["checkpoint_sha256"], header["producer"]


def header_content(value: bytes) -> str:
    return _header(value)["content_hash"]


def _header(value: bytes) -> dict:
    import json
    import struct

    _, _, n = struct.unpack_from("<4sHI", value)
    return json.loads(value[10 : 10 + n])


BAD_VALUES = {
    "corrupt": lambda v: v[: len(v) // 2] + bytes(len(v) - len(v) // 2),
    "truncated": lambda v: v[:100],
    "foreign": _foreign,
    "wrong_version": lambda v: v[:4] + (99).to_bytes(2, "little") + v[6:],
    "pickled": lambda v: pickle.dumps({"image_embed": np.zeros((1, 256, 16, 16), np.float32)}),
    "random": lambda v: bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f, marks=[] if f in ("pickled", "corrupt") else [pytest.mark.slow])
        for f in BAD_VALUES
    ],
)
def test_bad_value_in_redis_is_refused_not_served(replicas, redis_proc, fault: str) -> None:  # type: ignore[no-untyped-def]
    a, b, solo = replicas()
    a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
    key = _feature_key(redis_proc)
    redis_proc.client().set(key, BAD_VALUES[fault](redis_proc.client().get(key)))
    miss = segment(b, CLICKS[0], image_id="img")
    assert miss.status_code == 404 and "send the image" in miss.json()["message"]
    assert segment(a, CLICKS[0], image_id="img").status_code == 200  # A: local
    with_image = segment(b, CLICKS[0], image=COFFEE, image_id="img")
    assert with_image.status_code == 200
    assert (
        with_image.json()["predictions"]
        == segment(solo, CLICKS[0], image=COFFEE).json()["predictions"]
    )
    metrics = b.get("/metrics").text
    assert 'sam2serve_shared_tier_ops_total{op="features",result="refused"}' in metrics


def test_flushed_redis_gives_send_the_image_and_heals(replicas, redis_proc) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = replicas()
    a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
    redis_proc.client().flushall()
    assert segment(a, CLICKS[0], image_id="img").status_code == 200
    assert segment(b, CLICKS[0], image_id="img").status_code == 404
    # A re-embedding (a local hit) puts the features back for everyone
    a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
    assert segment(b, CLICKS[0], image_id="img").status_code == 200


def _wait_up(client, timeout_s: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        detail = client.get("/readyz").json()["shared_tier"]
        if detail["state"] == "up":
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError("shared tier did not recover within 10 s")


@pytest.mark.parametrize("fault", ["down", pytest.param("slow", marks=pytest.mark.slow)])
def test_redis_down_or_slow_degrades_to_local_only(replicas, redis_proc, fault: str) -> None:  # type: ignore[no-untyped-def]
    a, b, solo = replicas(redis_timeout_s=0.2)
    a.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
    want = segment(solo, CLICKS[1], image=CHELSEA).json()["predictions"]
    sleeper = None
    if fault == "down":
        redis_proc.stop()
    else:
        sleeper = threading.Thread(
            target=lambda: redis_proc.client().execute_command("DEBUG", "SLEEP", "5")
        )
        sleeper.start()
        time.sleep(0.2)
    for server in (b, a):
        local = segment(server, CLICKS[1], image=CHELSEA, image_id="cat")
        assert local.status_code == 200, local.text
        assert local.json()["predictions"] == want
    assert segment(a, CLICKS[1], image_id="img").status_code == 200
    ready = b.get("/readyz")
    assert ready.status_code == 200  # still ready: local-only
    if fault == "down":  # (a slow Redis may already answer again by now)
        assert ready.json()["shared_tier"]["state"].startswith("down")
        assert "sam2serve_shared_tier_up 0.0" in b.get("/metrics").text
    assert b.get("/info").json()["shared_tier"]["last_error"]  # B went first
    assert 'result="error"' in b.get("/metrics").text
    if fault == "down":
        redis_proc.start()
    else:
        assert sleeper is not None
        sleeper.join()
    for server in (a, b):  # each replica's breaker reopens on its own clock
        _wait_up(server)
    # recovered: B shares again (its own embed of "cat" was local-only; A's next embed publishes)
    a.post("/sam2/embed_image", json={"image": CHELSEA, "image_id": "cat2"})
    got = segment(b, CLICKS[1], image_id="cat2")
    assert got.status_code == 200, (
        a.get("/info").json()["shared_tier"],
        b.get("/info").json()["shared_tier"],
    )
