"""N prompts of mixed token counts in one request give exactly the N predictions each prompt
gives alone: on the exact torch path (tiny and real hiera_tiny architectures) and on the
fast runtime (within its bf16 tolerance)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sam2serve.api.app import create_app
from sam2serve.media.postprocess import rle_to_mask
from sam2serve.testing import TEST_MODEL_ID, registry_with_test_model
from sam2serve.wiring import build_services
from tests.conftest import encode_image, photos, tiny_settings


def _mixed(w: int, h: int) -> list[dict]:
    def pt(fx: float, fy: float, positive: bool = True) -> dict:
        return {"x": fx * w, "y": fy * h, "positive": positive}

    box = {"x": 0.5 * w, "y": 0.5 * h, "width": 0.4 * w, "height": 0.3 * h}
    return [
        {"points": [pt(0.3, 0.3)]},
        {"box": box, "points": [pt(0.5, 0.5), pt(0.2, 0.8, False)]},
        {"points": [pt(0.7, 0.2), pt(0.6, 0.4)]},
        {"box": box},
        {"points": [pt(0.8, 0.8), pt(0.1, 0.1, False), pt(0.4, 0.6), pt(0.9, 0.5)]},
        {"points": [pt(0.2, 0.6)]},
    ]


def _segment(client: TestClient, image_id: str, model: str, prompts: list[dict]):  # type: ignore[no-untyped-def]
    body = {"image_id": image_id, "sam2_version_id": model, "prompts": {"prompts": prompts}}
    binary = client.post("/sam2/segment_image", json={**body, "format": "binary"})
    assert binary.status_code == 200, binary.text
    npz = np.load(io.BytesIO(binary.content), allow_pickle=False)
    rle = client.post("/sam2/segment_image", json={**body, "format": "rle"})
    assert rle.status_code == 200, rle.text
    preds = rle.json()["predictions"]
    masks = np.stack([rle_to_mask(p["masks"]) for p in preds])
    return npz["low_res_masks"], masks, np.array([p["confidence"] for p in preds])


def _check(client: TestClient, model: str, *, exact: bool) -> None:
    rgb = photos()["astronaut"]
    h, w = rgb.shape[:2]
    embed = client.post(
        "/sam2/embed_image",
        json={"image": {"type": "base64", "value": encode_image(rgb)}, "sam2_version_id": model},
    )
    assert embed.status_code == 200, embed.text
    image_id = embed.json()["image_id"]
    prompts = _mixed(w, h)
    low, masks, scores = _segment(client, image_id, model, prompts)
    alone = [_segment(client, image_id, model, [p]) for p in prompts]
    assert low.shape[0] == masks.shape[0] == len(prompts)
    for i, (a_low, a_masks, a_scores) in enumerate(alone):
        if exact:
            np.testing.assert_allclose(low[i], a_low[0], atol=1e-4, err_msg=f"prompt {i}")
            np.testing.assert_allclose(scores[i], a_scores[0], atol=1e-5, err_msg=f"prompt {i}")
            mismatch = np.mean(masks[i] != a_masks[0])
            assert mismatch <= 1e-5, f"prompt {i}: {mismatch:.2e} of pixels differ"
        else:
            union = np.logical_or(masks[i], a_masks[0]).sum()
            inter = np.logical_and(masks[i], a_masks[0]).sum()
            iou = 1.0 if union == 0 else inter / union
            assert iou >= 0.98, f"prompt {i}: IoU {iou:.3f} vs alone"


@pytest.mark.parametrize("runtime", ["torch", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_tiny_mixed_prompts_equal_each_alone(tiny_weights_dir: Path, runtime: str) -> None:
    settings = tiny_settings(tiny_weights_dir, runtime=runtime)
    app = create_app(settings, build_services(settings, registry_with_test_model()))
    with TestClient(app) as client:
        _check(client, TEST_MODEL_ID, exact=runtime == "torch")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sam2.1_hiera_tiny", "sam2_hiera_tiny"])
def test_real_mixed_prompts_equal_each_alone(real_weights_dir: Path, model: str) -> None:
    settings = tiny_settings(real_weights_dir, runtime="torch", default_model=model)
    with TestClient(create_app(settings)) as client:
        _check(client, model, exact=True)
