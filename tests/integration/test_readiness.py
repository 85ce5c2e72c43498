"""Ready means able to serve: /readyz answers 503 with the weights' reason (which file, where,
how to get it) while the default model cannot be loaded; liveness stays green."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from sam2serve.api.app import create_app
from sam2serve.testing import TEST_MODEL_ID, registry_with_test_model
from sam2serve.wiring import build_services
from tests.conftest import encode_image, photos, tiny_settings

CHECKPOINT = f"{TEST_MODEL_ID}.pt"


def _client(weights_dir: Path, **overrides: object) -> TestClient:
    settings = tiny_settings(weights_dir, **overrides)
    app = create_app(settings, build_services(settings, registry_with_test_model()))
    return TestClient(app, raise_server_exceptions=False)


def _wait_ready(client: TestClient, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get("/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.2)


@pytest.mark.parametrize("allow_download", [False, True])
def test_missing_weights_are_not_ready_and_say_which_file(
    tmp_path: Path, allow_download: bool
) -> None:
    with _client(tmp_path, allow_download=allow_download) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "weights_missing"
        for part in (CHECKPOINT, str(tmp_path), f"sam2serve download {TEST_MODEL_ID}"):
            assert part in body["message"]
        assert client.get("/healthz").status_code == 200  # alive: a restart brings no weights
        if not allow_download:  # the same words as the 503 every segment request gets
            embed = client.post(
                "/sam2/embed_image", json={"image": {"type": "base64", "value": _png()}}
            )
            assert embed.status_code == 503 and embed.json()["message"] == body["message"]


def test_ready_once_the_weights_are_placed(tmp_path: Path, tiny_weights_dir: Path) -> None:
    """With preload on: the failed preload is the reason; placing the file loads the model
    in the background (loading -> ready), no restart needed."""
    with _client(tmp_path, preload=True, allow_download=False) as client:
        deadline = time.monotonic() + 30
        while client.app.state.preloading and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = client.get("/readyz")
        assert failed.status_code == 503 and failed.json()["status"] == "weights_missing"
        assert "file not found" in failed.json()["message"]
        shutil.copy(tiny_weights_dir / CHECKPOINT, tmp_path / CHECKPOINT)
        assert client.get("/readyz").json()["status"] in ("loading", "ready")
        assert _wait_ready(client)["status"] == "ready"
        assert TEST_MODEL_ID in client.app.state.services.images.pool.loaded


def test_present_weights_are_ready_before_the_first_load(tiny_weights_dir: Path) -> None:
    with _client(tiny_weights_dir) as client:  # preload off: the first request loads
        assert client.get("/readyz").status_code == 200
        assert client.app.state.services.images.pool.loaded == []


@pytest.mark.ray
def test_ray_health_check_is_liveness(tmp_path: Path) -> None:
    """Serve's health check stays green without weights (only draining fails it)."""
    import asyncio

    from sam2serve.ray_serve import Sam2Deployment

    with _client(tmp_path) as client:
        replica = SimpleNamespace(fastapi_app=client.app, services=client.app.state.services)
        check = Sam2Deployment.func_or_class.check_health
        assert client.get("/readyz").status_code == 503
        asyncio.run(check(replica))  # healthy: no exception
        client.app.state.draining = True
        with pytest.raises(RuntimeError):
            asyncio.run(check(replica))
        client.app.state.draining = False


def _png() -> str:
    return encode_image(photos()["coffee"][:64, :64])
