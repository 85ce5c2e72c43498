"""First start on a cold fast-runtime cache: the server prepares the default model in the
background, /readyz says what it is doing (503) until it is ready, and requests meanwhile
are served on the exact torch path instead of waiting for the export."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sam2serve.api.app import create_app
from sam2serve.runtime import openvino_runtime as ovr
from sam2serve.runtime.preparing import PreparingRuntime
from sam2serve.runtime.torch_runtime import TorchRuntime
from sam2serve.testing import TEST_MODEL_ID, registry_with_test_model
from sam2serve.wiring import build_services
from tests.conftest import encode_image, photos, tiny_settings

pytest.importorskip("openvino")


@pytest.mark.slow  # a real cold preparation of the test model (export, int8, choice: ~1 min)
def test_cold_start_serves_exact_then_fast(
    tiny_weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_load = ovr.load_runtime

    def gated_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        release.wait(120)  # the test decides when the "export" ends
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ovr, "load_runtime", gated_load)
    settings = tiny_settings(
        tiny_weights_dir, runtime="openvino", runtime_cache_dir=tmp_path, preload=True
    )
    services = build_services(settings, registry_with_test_model(), background_prepare=True)
    with TestClient(create_app(settings, services)) as client:
        deadline = time.monotonic() + 60
        while True:  # loading the torch model, then preparing the fast runtime
            ready = client.get("/readyz")
            assert ready.status_code == 503
            if ready.json()["status"] == "preparing":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "first use: preparing the fast runtime" in ready.json()["message"]
        assert "(one time)" in ready.json()["message"]
        runtime = services.images.pool._loaded[TEST_MODEL_ID]
        assert isinstance(runtime, PreparingRuntime)
        assert isinstance(runtime.active, TorchRuntime)

        rgb = photos()["coffee"]
        image = {"type": "base64", "value": encode_image(rgb)}
        embed = client.post("/sam2/embed_image", json={"image": image})  # not waiting
        assert embed.status_code == 200, embed.text
        prompts = {"prompts": [{"points": [{"x": 100, "y": 120, "positive": True}]}]}
        body = {"image_id": embed.json()["image_id"], "prompts": prompts, "format": "rle"}
        before = client.post("/sam2/segment_image", json=body)
        assert before.status_code == 200, before.text
        assert runtime.preparing  # all of that on the exact path

        release.set()
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline + 120
            time.sleep(0.1)
        assert isinstance(runtime.active, ovr.OpenVinoRuntime)
        assert ovr.is_exported(
            services.images.spec_for(None), tiny_weights_dir / "test_tiny.pt", tmp_path
        )
        # the image embedded on the exact path still decodes on the fast one
        after = client.post("/sam2/segment_image", json=body)
        assert after.status_code == 200, after.text
        assert len(after.json()["predictions"]) == 1
        info = client.get("/info").json()
        assert info["models"]  # describe() works on the wrapper
        # the encoder was chosen by measurement during the preparation, and /info says so
        chosen = info["runtimes"][TEST_MODEL_ID]
        assert chosen["runtime"] == "PreparingRuntime"
        assert chosen["precision"] == runtime.active.precision
        assert chosen["choice"]["encoder"] == runtime.active.encoder_precision
        assert set(chosen["choice"]["candidates"]) >= {"f32", chosen["choice"]["encoder"]}
        assert ovr.is_prepared(
            services.images.spec_for(None), tiny_weights_dir / "test_tiny.pt", tmp_path
        )
