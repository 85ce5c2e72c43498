"""deploy/nginx-affinity.conf, as shipped (addresses and port rewritten), in front of two real
replica processes sharing a real redis-server: the SDK's embeds and clicks of an image land on
one replica with no Redis feature fetch; requests without the header still spread and work
through Redis; losing a replica, clicks go on through the other one."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.nginx import NGINX, Nginx, running_nginx
from sam2serve.client import Sam2Client
from sam2serve.wire import IMAGE_ID_HEADER
from tests.conftest import encode_image, photos
from tests.helpers_redis import RedisProcess
from tests.helpers_reliability import Server, reliability_server

pytestmark = pytest.mark.slow

REPLICA = "X-Sam2serve-Replica"
CLICKS = [(30 + 7 * i, 20 + 5 * i) for i in range(8)]
PHOTOS = list(photos().values())
MAX_IMAGES = 40  # per test: images are added until both replicas own some (2^-39 to fail)


def _image(i: int) -> np.ndarray:
    """Image number `i` (< 150): a small crop of a test photo, distinct for every i."""
    top, left = 2 * (i // 3), 3 * (i // 3)
    return np.ascontiguousarray(PHOTOS[i % 3][top : top + 96, left : left + 128])


@dataclass
class Cluster:
    nginx: Nginx
    replicas: dict[str, Server]  # by replica name (X-Sam2serve-Replica)

    def fetches(self) -> dict[str, int]:
        """Features fetched from Redis so far, per live replica (shared_tier counts)."""
        out = {}
        for name, server in self.replicas.items():
            if server.proc.poll() is None:
                info = httpx.get(f"{server.url}/info", timeout=30).json()
                out[name] = info["shared_tier"]["counts"].get("features.hit", 0)
        return out


@pytest.fixture(scope="module")
def cluster(tiny_weights_dir: Path) -> Iterator[Cluster]:
    if not Path(NGINX).exists():
        pytest.skip("needs Debian's nginx (apt-get install nginx; .ci/run installs it)")
    with ExitStack() as stack:
        redis_proc = RedisProcess()
        redis_proc.start()
        stack.callback(redis_proc.close)
        replicas = {}
        for name in ("A", "B"):
            replicas[name] = stack.enter_context(
                reliability_server(
                    tiny_weights_dir,
                    SAM2SERVE_REDIS_URL=redis_proc.url,
                    SAM2SERVE_REDIS_RETRY_S="0.5",
                    # a loaded CI machine must not trip the breaker (a skipped publish would
                    # turn a click on the other replica into a 404)
                    SAM2SERVE_REDIS_TIMEOUT_S="5",
                    SAM2SERVE_REPLICA_NAME=name,
                )
            )
        ports = [int(server.url.rsplit(":", 1)[1]) for server in replicas.values()]
        nginx = stack.enter_context(running_nginx(ports))
        yield Cluster(nginx, replicas)


class Recorder(httpx.HTTPTransport):
    """The SDK's transport, recording (path, affinity header, answering replica)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        path = request.url.path.rsplit("/", 1)[-1]
        replica = response.headers.get(REPLICA, "")
        self.seen.append((path, request.headers.get(IMAGE_ID_HEADER), replica))
        return response


def _embed_and_click(client: Sam2Client, image: np.ndarray, clicks: int) -> str:
    image_id = client.embed_image(image).image_id
    for x, y in CLICKS[:clicks]:
        result = client.segment_image(image_id=image_id, points=[(x, y)], format="rle")
        assert result.masks.shape[1:] == image.shape[:2]
    return image_id


def test_sdk_requests_of_an_image_land_on_one_replica_without_redis_fetches(
    cluster: Cluster,
) -> None:
    before = cluster.fetches()
    recorder = Recorder()
    owners: dict[str, set[str]] = {}
    with Sam2Client(cluster.nginx.url, transport=recorder) as client:
        for i in range(MAX_IMAGES):
            start = len(recorder.seen)
            image_id = _embed_and_click(client, _image(i), len(CLICKS))
            requests = recorder.seen[start:]
            assert [h for _, h, _ in requests] == [image_id] * len(requests)  # embed too
            owners[image_id] = {replica for _, _, replica in requests}
            if i >= 5 and set.union(*owners.values()) == {"A", "B"}:
                break
    assert all(len(replicas) == 1 for replicas in owners.values()), owners
    assert set.union(*owners.values()) == {"A", "B"}, owners
    assert cluster.fetches() == before  # every click local: no feature fetch from Redis


def test_requests_without_the_header_spread_and_work_through_redis(cluster: Cluster) -> None:
    """inference-sdk / curl: no header, nginx balances round robin as before; the replica
    that did not embed fetches the features from Redis once."""
    image = {"type": "base64", "value": encode_image(_image(149))}
    before = cluster.fetches()
    seen = []
    with httpx.Client(base_url=cluster.nginx.url, timeout=60) as http:
        embed = http.post("/sam2/embed_image", json={"image": image, "image_id": "plain"})
        assert embed.status_code == 200, embed.text
        for x, y in CLICKS:
            body = {
                "image_id": "plain",
                "prompts": {"points": [{"x": x, "y": y, "positive": True}]},
            }
            got = http.post("/sam2/segment_image", json=body)
            assert got.status_code == 200, got.text
            seen.append(got.headers[REPLICA])
    assert set(seen) == {"A", "B"}, seen
    after = cluster.fetches()
    other = "B" if embed.headers[REPLICA] == "A" else "A"
    assert after[other] - before[other] == 1, (before, after)


def test_losing_a_replica_clicks_go_on_through_the_other(cluster: Cluster) -> None:
    """Runs last: it kills replica A. A's images are then clicked on B (nginx retries the
    refused connection there), which fetches their features from Redis once each."""
    recorder = Recorder()
    with Sam2Client(cluster.nginx.url, transport=recorder) as client:
        owner: dict[str, str] = {}
        for i in range(MAX_IMAGES, 2 * MAX_IMAGES):
            image_id = _embed_and_click(client, _image(i), 1)
            (replica,) = {r for _, h, r in recorder.seen if h == image_id}
            owner[image_id] = replica
            if set(owner.values()) == {"A", "B"}:
                break
        assert set(owner.values()) == {"A", "B"}, owner
        victim = cluster.replicas["A"]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(timeout=30)
        before = cluster.fetches()["B"]
        start = len(recorder.seen)
        for image_id in owner:
            for x, y in CLICKS[:3]:
                client.segment_image(image_id=image_id, points=[(x, y)], format="rle")
        after = recorder.seen[start:]
    assert {replica for _, _, replica in after} == {"B"}
    moved = sum(1 for replica in owner.values() if replica == "A")
    assert cluster.fetches()["B"] - before == moved  # each of A's images fetched once
