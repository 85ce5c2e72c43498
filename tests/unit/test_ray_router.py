"""The Ray Serve router's parts without a cluster: the image id read from the request Serve's
proxy forwards (or from the session id, when the cluster names this header), and the
rendezvous ranking of replicas (stable, balanced, minimal movement when a replica goes)."""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from ray.serve._private.common import RequestMetadata, StreamingHTTPRequest
from ray.serve.request_router import PendingRequest

from sam2serve.ray_router import image_key, rank_replicas


def _http_request(headers: list[tuple[bytes, bytes]], session_id: str = "") -> PendingRequest:
    """A request as Serve's HTTP proxy hands it to the router: one pickled argument."""
    scope = {"type": "http", "method": "POST", "path": "/sam2/segment_image", "headers": headers}
    arg = pickle.dumps(StreamingHTTPRequest(scope, proxy_actor_name="proxy"))
    metadata = RequestMetadata(request_id="r", internal_request_id="i", session_id=session_id)
    return PendingRequest(args=[arg], kwargs={}, metadata=metadata, future=None)  # type: ignore[arg-type]


JSON = (b"content-type", b"application/json")


@pytest.mark.parametrize(
    ("request_", "session_is_ours", "expected"),
    [
        (_http_request([JSON, (b"x-sam2serve-image-id", b"img-1")]), False, "img-1"),
        (_http_request([(b"X-Sam2serve-Image-Id", b"img-1")]), False, "img-1"),
        (_http_request([JSON]), False, None),  # no header: routed by load
        (_http_request([(b"x-sam2serve-image-id", b"bad id")]), False, None),
        (_http_request([(b"x-sam2serve-image-id", b"x" * 129)]), False, None),
        # the cluster names this header as Serve's session header: the proxy passed it on
        (_http_request([], session_id="img-2"), True, "img-2"),
        (_http_request([(b"x-sam2serve-image-id", b"img-1")]), True, None),
        (None, False, None),
    ],
    ids=[
        "header",
        "header in any case",
        "no header",
        "not an image id",
        "too long",
        "session id",
        "session id expected, none",
        "no request",
    ],
)
def test_image_key(request_: Any, session_is_ours: bool, expected: str | None) -> None:
    assert image_key(request_, session_is_ours) == expected


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([pickle.dumps({"not": "a request"})], {}),
        ([b"\x80\x05garbage"], {}),
        (["a python call"], {}),
        ([], {"x": 1}),
    ],
    ids=["other pickle", "bad pickle", "python argument", "kwargs"],
)
def test_other_callers_of_the_handle_are_routed_by_load(args: list, kwargs: dict) -> None:
    metadata = RequestMetadata(request_id="r", internal_request_id="i")
    request = PendingRequest(args=args, kwargs=kwargs, metadata=metadata, future=None)  # type: ignore[arg-type]
    assert image_key(request, False) is None


@dataclass(frozen=True)
class _Id:
    unique_id: str


@dataclass(frozen=True)
class _Replica:
    """What rank_replicas reads of a RunningReplica."""

    replica_id: _Id


REPLICAS = [_Replica(_Id(name)) for name in ("a1b2", "c3d4", "e5f6")]
KEYS = [f"img-{i}" for i in range(3000)]


def test_ranking_is_a_pure_function_of_key_and_replica_ids() -> None:
    for key in KEYS[:50]:
        first = rank_replicas(key, REPLICAS)  # type: ignore[arg-type]
        assert sorted(first, key=lambda r: r.replica_id.unique_id) == REPLICAS
        assert rank_replicas(key, list(reversed(REPLICAS))) == first  # type: ignore[arg-type]


def test_images_spread_over_replicas() -> None:
    owners = Counter(rank_replicas(key, REPLICAS)[0] for key in KEYS)  # type: ignore[arg-type]
    assert set(owners) == set(REPLICAS)
    assert all(800 <= n <= 1200 for n in owners.values()), owners  # 1000 each on average


def test_losing_a_replica_moves_only_its_images() -> None:
    gone = REPLICAS[1]
    left = [r for r in REPLICAS if r != gone]
    for key in KEYS:
        before = rank_replicas(key, REPLICAS)  # type: ignore[arg-type]
        after = rank_replicas(key, left)  # type: ignore[arg-type]
        assert after == [r for r in before if r != gone]  # order of the rest kept
