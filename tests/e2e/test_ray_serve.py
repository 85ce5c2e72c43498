"""The Ray Serve application on a real local Ray cluster: two replicas behind Ray's proxy
sharing a real redis-server; requests with the affinity header stay on one replica per image
(the others spread by load); one replica killed under steady click load."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import encode_image, photos
from tests.helpers_redis import RedisProcess
from tests.helpers_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray]

COFFEE = {"type": "base64", "value": encode_image(photos()["coffee"])}
CLICKS = [{"points": [{"x": 40 + 9 * i, "y": 30 + 7 * i, "positive": True}]} for i in range(20)]
REPLICA = "X-Sam2serve-Replica"
TEST_REGISTRY = "sam2serve.testing:registry_with_test_model"


@pytest.fixture(scope="module")
def serve_url(tiny_weights_dir: Path) -> Iterator[str]:
    ray = pytest.importorskip("ray")
    from ray import serve

    from sam2serve.ray_serve import app_builder

    redis_proc = RedisProcess()
    redis_proc.start()
    env = {
        "SAM2SERVE_WEIGHTS_DIR": str(tiny_weights_dir),
        "SAM2SERVE_DEFAULT_MODEL": "test_tiny",
        "SAM2SERVE_RUNTIME": "torch",
        "SAM2SERVE_DEVICE": "cpu",
        "SAM2SERVE_ALLOW_DOWNLOAD": "false",
        "SAM2SERVE_REDIS_URL": redis_proc.url,
        "SAM2SERVE_REDIS_RETRY_S": "0.5",
        # Ray sets 1 thread per CPU of the actor; match this process so float reductions
        # (and so masks) are bit-identical to the single-process server's
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    try:
        ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app_builder({"registry": TEST_REGISTRY}), name="sam2serve", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:  # also when the deployment fails: never leave Ray or Redis behind
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        redis_proc.close()


def _rle(response: httpx.Response) -> list:
    return response.json()["predictions"]


def test_two_replicas_serve_clicks_equal_to_one_process(serve_url: str, make_client) -> None:  # type: ignore[no-untyped-def]
    solo = make_client(runtime="torch")
    with httpx.Client(base_url=serve_url, timeout=60) as http:
        assert http.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"}).is_success
        solo.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
        seen = set()
        for prompt in CLICKS:
            body = {"image_id": "img", "prompts": prompt, "format": "rle"}
            got = http.post("/sam2/segment_image", json=body)
            assert got.status_code == 200, got.text
            seen.add(got.headers[REPLICA])
            assert _rle(got) == _rle(solo.post("/sam2/segment_image", json=body))
        assert len(seen) == 2, seen
        assert http.get("/readyz").json()["shared_tier"]["state"] == "up"


def test_requests_with_the_affinity_header_stay_on_one_replica_per_image(serve_url: str) -> None:
    """X-Sam2serve-Image-Id (as the SDK sends it): an image's embed and every click land on
    the replica the router ranks first for its id; requests without it spread by load."""
    from sam2serve.ray_router import rank_replicas

    with httpx.Client(base_url=serve_url, timeout=60) as http:
        names: set[str] = set()
        for _ in range(60):  # no header: routed by load, so both replicas answer soon
            names.add(http.get("/info").json()["replica"])
            if len(names) == 2:
                break
        assert len(names) == 2, names
        replicas = [_Replica(_Id(name.split("#", 1)[1])) for name in sorted(names)]
        owners: dict[str, set[str]] = {}
        for n in range(12):
            image_id = f"aff-{n}"
            header = {"X-Sam2serve-Image-Id": image_id}
            embed = {"image": COFFEE, "image_id": image_id}
            got = http.post("/sam2/embed_image", json=embed, headers=header)
            assert got.status_code == 200, got.text
            seen = {got.headers[REPLICA]}
            for prompt in CLICKS[:6]:
                body = {"image_id": image_id, "prompts": prompt, "format": "rle"}
                got = http.post("/sam2/segment_image", json=body, headers=header)
                assert got.status_code == 200, got.text
                seen.add(got.headers[REPLICA])
            owners[image_id] = seen
    expected = {
        image_id: {f"sam2serve#{rank_replicas(image_id, replicas)[0].replica_id.unique_id}"}  # type: ignore[arg-type]
        for image_id in owners
    }
    assert owners == expected


@dataclass(frozen=True)
class _Id:
    unique_id: str


@dataclass(frozen=True)
class _Replica:
    """What rank_replicas reads of one of Serve's replicas."""

    replica_id: _Id


def test_killed_replica_under_click_load_only_fails_in_flight(serve_url: str) -> None:
    import ray

    body = {"image_id": "img", "prompts": CLICKS[0], "format": "rle"}
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=serve_url, timeout=60) as http:
            http.post("/sam2/embed_image", json={"image": COFFEE, "image_id": "img"})
            while not stop.is_set():
                try:
                    r = http.post("/sam2/segment_image", json=body)
                    statuses.append((r.status_code, r.headers.get(REPLICA, "")))
                except httpx.HTTPError:
                    statuses.append((0, ""))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len({name for code, name in statuses if code == 200}) < 2:
            time.sleep(0.1)
        victim_name = next(name for code, name in statuses if code == 200)
        replica_id = victim_name.split("#", 1)[1]
        actors = ray.util.list_named_actors(all_namespaces=True)
        (actor,) = [a for a in actors if a["name"].endswith(replica_id)]
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        killed_at = len(statuses)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = {name for code, name in statuses[killed_at:] if code == 200}
            if len(after - {victim_name}) >= 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no replacement replica served within 120 s: {after}")
    finally:
        stop.set()
        worker.join(timeout=60)
    failures = [code for code, _ in statuses if code != 200]
    assert len(failures) <= 2, f"{len(failures)} failed of {len(statuses)}: {failures}"
    assert all(code in (0, 500, 502, 503) for code in failures)
