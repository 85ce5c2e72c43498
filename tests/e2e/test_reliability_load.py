"""Reliability battery, load side: overload admission, clients that disconnect, SIGTERM.

Timings are measured and printed (docs/reliability.md records them); the asserts are on
outcomes (503 + Retry-After, admitted requests succeed, work dropped, exit status), never
on tight timings that a loaded 2-core box would flake on.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from sam2serve.testing import TEST_MODEL_ID
from tests.conftest import tiny_settings
from tests.helpers_reliability import png_b64, reliability_server, scrape_value

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

EMB, SEG = "/sam2/embed_image", "/sam2/segment_image"


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def test_overload_refuses_large_images_at_once_and_admitted_ones_succeed(
    tiny_weights_dir: Path,
) -> None:
    big = [png_b64(6000, 6000, seed=s) for s in (1, 2)]  # 36 MP each, ~100 KB of PNG
    with reliability_server(tiny_weights_dir, SAM2SERVE_EMBED_QUEUE="1") as srv:
        c = httpx.Client(base_url=srv.url, timeout=300)
        small = png_b64(96, 64, seed=9)
        assert c.post(
            EMB, json={"image": {"type": "base64", "value": small}, "image_id": "c"}
        ).is_success
        click = {"image_id": "c", "prompts": [{"points": [{"x": 30, "y": 20}]}], "format": "rle"}

        admitted: list[httpx.Response] = []
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(c.post, EMB, json={"image": {"type": "base64", "value": b}})
                for b in big
            ]
            time.sleep(0.3)  # both admitted: the 2 slots (1 running + 1 waiting) are taken
            refused_ms: list[float] = []
            retry_after: list[str] = []
            click_ms: list[float] = []
            while not all(f.done() for f in futures) and len(refused_ms) < 10:
                t0 = time.perf_counter()
                r = c.post(EMB, json={"image": {"type": "base64", "value": big[0]}})
                if r.status_code == 503:
                    refused_ms.append((time.perf_counter() - t0) * 1e3)
                    retry_after.append(r.headers.get("retry-after", ""))
                    assert "busy" in r.json()["message"]
                t0 = time.perf_counter()
                assert c.post(SEG, json=click).status_code == 200
                click_ms.append((time.perf_counter() - t0) * 1e3)
            admitted = [f.result() for f in futures]
        assert [r.status_code for r in admitted] == [200, 200], [r.text for r in admitted]
        assert refused_ms, "the two 36 MP embeds finished before any refusal was tried"
        assert all(v.isdigit() and int(v) >= 1 for v in retry_after)
        refused_total = scrape_value(srv.url, "sam2serve_requests_total", route=EMB, status="503")
        assert refused_total == len(refused_ms)
        print(
            f"overload: {len(refused_ms)} refusals of a 36 MP embed, median "
            f"{statistics.median(refused_ms):.1f} ms, max {max(refused_ms):.1f} ms; "
            f"cached clicks meanwhile: n={len(click_ms)} p95 {_p95(click_ms):.1f} ms"
        )


def test_disconnected_clients_work_is_not_started(tiny_weights_dir: Path) -> None:
    """A running embed whose client left finishes and is cached; queued ones are dropped."""
    import uvicorn

    from sam2serve.api.app import create_app
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services
    from tests.helpers_server import free_port

    settings = tiny_settings(tiny_weights_dir, runtime="torch", embed_queue=4)
    services = build_services(settings, registry_with_test_model())
    service = services.images
    app = create_app(settings, services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.05)
        warm = httpx.post(
            url + EMB, json={"image": {"type": "base64", "value": png_b64(32, 32)}}, timeout=120
        )
        assert warm.status_code == 200
        runtime = service.pool._loaded[TEST_MODEL_ID]
        gate = threading.Event()
        calls: list[int] = []
        original = runtime.embed

        def gated_embed(rgb: np.ndarray):  # type: ignore[no-untyped-def]
            calls.append(rgb.shape[0])
            gate.wait(30)
            return original(rgb)

        runtime.embed = gated_embed  # type: ignore[method-assign]

        def impatient(height: int) -> str:
            body = {"image": {"type": "base64", "value": png_b64(48, height, seed=height)}}
            try:
                httpx.post(url + EMB, json=body, timeout=1.5)
            except httpx.TimeoutException:
                return "left"
            return "answered"

        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(impatient, 40)  # runs (blocked on the gate)
            time.sleep(0.4)
            queued = [pool.submit(impatient, h) for h in (41, 42)]  # wait in the lane
            outcomes = [first.result(), *(q.result() for q in queued)]
        assert outcomes == ["left"] * 3
        time.sleep(0.3)  # the server notices the disconnects
        gate.set()
        deadline = time.monotonic() + 30
        while len(service.store.local) < 2 and time.monotonic() < deadline:  # warm + first
            time.sleep(0.1)
        assert calls == [40], "only the embed that was already running may run"
        assert len(service.store.local) == 2  # it finished and was cached
        assert service.embed_lane.dropped == 2
        gone = scrape_value(url, "sam2serve_requests_total", route=EMB, status="499")
        assert gone == 3
        print(f"disconnect: 3 clients left; ran 1 (cached), dropped {service.embed_lane.dropped}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_sigterm_drains_in_flight_requests_and_exits_0(tiny_weights_dir: Path) -> None:
    images = [png_b64(1200, 900, seed=s, noise=True) for s in range(4)]
    with reliability_server(tiny_weights_dir, SAM2SERVE_SHUTDOWN_GRACE_S="60") as srv:
        c = httpx.Client(base_url=srv.url, timeout=120)
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(c.post, EMB, json={"image": {"type": "base64", "value": img}})
                for img in images
            ]
            time.sleep(0.5)  # all four sent and in flight
            t0 = time.perf_counter()
            srv.proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        code = srv.proc.wait(timeout=60)
        drained_s = time.perf_counter() - t0
        assert statuses == [200] * 4
        assert code == 0, srv.log()[-3000:]
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/readyz", timeout=2)
        print(f"sigterm: 4/4 in-flight embeds answered 200, exit {code} after {drained_s:.2f} s")


def test_readyz_is_503_as_soon_as_a_signal_arrives(tiny_weights_dir: Path) -> None:
    from sam2serve.api.app import create_app
    from sam2serve.api.server import GracefulServer
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services

    settings = tiny_settings(tiny_weights_dir)
    app = create_app(settings, build_services(settings, registry_with_test_model()))
    import uvicorn
    from fastapi.testclient import TestClient

    server = GracefulServer(uvicorn.Config(app))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        server.handle_exit(signal.SIGTERM, None)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "draining"
    assert server.should_exit


def test_healthz_answers_while_large_bodies_are_parsed(tiny_weights_dir: Path) -> None:
    """Three clients send 11 MB JSON bodies in a loop; /healthz latency meanwhile."""
    import base64
    import os

    junk = base64.b64encode(os.urandom(8 * 1024 * 1024)).decode()  # ~11 MB of base64
    body = {"image": {"type": "base64", "value": junk}}
    with reliability_server(tiny_weights_dir) as srv:
        stop = threading.Event()
        answers: list[int] = []

        def sender() -> None:
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                while not stop.is_set():
                    answers.append(c.post(EMB, json=body).status_code)

        probe = httpx.Client(base_url=srv.url, timeout=30)
        idle = [_timed_get(probe, "/healthz") for _ in range(20)]
        threads = [threading.Thread(target=sender) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        busy = [_timed_get(probe, "/healthz") for _ in range(40)]
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert answers and set(answers) <= {400, 503}, set(answers)  # not an image / busy
        print(
            f"healthz: idle p99 {np.percentile(idle, 99):.1f} ms; with 3 clients sending 11 MB "
            f"bodies ({len(answers)} sent): p50 {np.percentile(busy, 50):.1f} ms, "
            f"p99 {np.percentile(busy, 99):.1f} ms"
        )


def _timed_get(client: httpx.Client, path: str) -> float:
    t0 = time.perf_counter()
    assert client.get(path).status_code == 200
    return (time.perf_counter() - t0) * 1e3
