"""A real `sam2serve serve` process on a local port, driven by real clients: Roboflow's
inference-sdk, raw httpx with concurrency, and the bind-safety check of the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.conftest import encode_image, photos
from tests.helpers_server import SAM2SERVE, running_server

pytestmark = [pytest.mark.slow, pytest.mark.openvino]


@pytest.fixture(scope="module")
def server(real_weights_dir: Path):  # type: ignore[no-untyped-def]
    with running_server(real_weights_dir, env={"SAM2SERVE_API_KEYS": "secret-key"}) as url:
        yield url


@pytest.mark.parametrize("transport", ["legacy", "header"])  # ?api_key= / Authorization: Bearer
def test_inference_sdk_sam2_segment_image(server: str, transport: str) -> None:
    from inference_sdk import InferenceConfiguration, InferenceHTTPClient

    client = InferenceHTTPClient(api_url=server, api_key="secret-key").configure(
        InferenceConfiguration(api_key_transport=transport)
    )
    rgb = photos()["coffee"]
    h, w = rgb.shape[:2]
    prompts = [
        {"points": [{"x": 300, "y": 200, "positive": True}]},
        {"box": {"x": 300, "y": 200, "width": 200, "height": 150}},
        {
            "box": {"x": 250, "y": 180, "width": 300, "height": 200},
            "points": [
                {"x": 250, "y": 180, "positive": True},
                {"x": 20, "y": 20, "positive": False},
            ],
        },
    ]
    result = client.sam2_segment_image(rgb[:, :, ::-1].copy(), prompts=prompts)  # SDK takes BGR
    preds = result["predictions"]
    assert len(preds) == 3
    for pred in preds:
        assert pred["format"] == "polygon" and 0.0 <= pred["confidence"] <= 1.5
        for polygon in pred["masks"]:
            assert all(0 <= x < w and 0 <= y < h for x, y in polygon)
    # the SDK sends arrays as JPEG (cv2.imencode): the same bytes straight over HTTP give
    # exactly the same answer
    jpeg = base64.b64encode(cv2.imencode(".jpg", rgb[:, :, ::-1].copy())[1].tobytes()).decode()
    direct = httpx.post(
        f"{server}/sam2/segment_image",
        params={"api_key": "secret-key"},
        json={"image": {"type": "base64", "value": jpeg}, "prompts": prompts},
        timeout=60,
    ).json()
    assert direct["predictions"] == preds


def test_sdk_without_key_is_refused(server: str) -> None:
    r = httpx.post(f"{server}/sam2/embed_image", json={"image": {"type": "base64", "value": ""}})
    assert r.status_code == 401


def test_concurrent_clicks_match_sequential(server: str) -> None:
    auth = {"Authorization": "Bearer secret-key"}
    image = {"type": "base64", "value": encode_image(photos()["astronaut"])}
    r = httpx.post(f"{server}/sam2/embed_image", json={"image": image}, headers=auth, timeout=60)
    image_id = r.json()["image_id"]
    bodies = [
        {
            "image_id": image_id,
            "format": "rle",
            "prompts": [{"points": [{"x": 40 + 50 * i, "y": 60 + 40 * i, "positive": True}]}],
        }
        for i in range(8)
    ]

    def call(body: dict) -> dict:
        resp = httpx.post(f"{server}/sam2/segment_image", json=body, headers=auth, timeout=60)
        assert resp.status_code == 200, resp.text
        return resp.json()["predictions"]

    sequential = [call(b) for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(call, bodies))
    for seq, conc in zip(sequential, concurrent, strict=True):
        assert seq[0]["masks"] == conc[0]["masks"]
        assert np.isclose(seq[0]["confidence"], conc[0]["confidence"], atol=1e-5)


@pytest.mark.parametrize(
    ("args", "env", "ok"),
    [
        (["--host", "0.0.0.0"], {}, False),
        (["--host", "::"], {}, False),
        (["--host", "192.0.2.10"], {}, False),
    ],
)
def test_public_bind_without_keys_is_refused(
    tmp_path: Path, args: list[str], env: dict, ok: bool
) -> None:
    proc = subprocess.run(
        [SAM2SERVE, "serve", "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "SAM2SERVE_WEIGHTS_DIR": str(tmp_path), **env},
    )
    assert proc.returncode == 2
    assert "refusing to bind" in proc.stderr and "Traceback" not in proc.stderr


def test_download_build_runtime_prepares_the_fast_runtime(
    real_weights_dir: Path, runtime_cache_dir: Path
) -> None:
    """`sam2serve download ID --build-runtime` prepares the fast runtime once (graphs, int8
    encoder, measured choice), into a folder keyed by model id and checkpoint hash; a second
    run reuses them."""
    cmd = [SAM2SERVE, "download", "sam2.1_hiera_tiny", "--build-runtime"]
    env = {
        "PATH": "/usr/bin:/bin",
        "SAM2SERVE_WEIGHTS_DIR": str(real_weights_dir),
        "SAM2SERVE_RUNTIME_CACHE_DIR": str(runtime_cache_dir),
        # this checkout's code, not whatever the venv has installed
        **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
    }
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr
    assert "already present" in first.stdout and "fast runtime ready in" in first.stdout
    built = [  # the key folder (its export lock file lies beside it)
        p
        for p in runtime_cache_dir.iterdir()
        if p.is_dir() and p.name.startswith("sam2.1_hiera_tiny-")
    ]
    assert len(built) == 1
    assert list(built[0].glob("encoder-int8-*.xml")) and list(built[0].glob("choice-*.json"))
    stamp = {p: p.stat().st_mtime for p in built[0].iterdir()}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime for p in built[0].iterdir()} == stamp


@pytest.mark.parametrize(
    ("args", "env", "word"),
    [
        (["serve", "--runtime", "bogus"], {}, "runtime"),
        (["models"], {"SAM2SERVE_CACHE_BYTES": "lots"}, "SAM2SERVE_CACHE_BYTES"),
    ],
)
def test_bad_settings_are_one_line_errors(args: list[str], env: dict, word: str) -> None:
    proc = subprocess.run(
        [SAM2SERVE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert proc.returncode == 2
    assert word in proc.stderr and "Traceback" not in proc.stderr
