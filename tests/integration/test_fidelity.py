"""The server's masks and scores equal Meta's SAM2ImagePredictor on the same weights.

Real hiera_tiny architectures (SAM 2.1 and SAM 2) with seeded random weights, three real
photos, and a table of prompt kinds. Meta's predictor is called once per prompt, alone (a
prompt's mask never depends on the other prompts of its request), then the best-scoring of
the proposals is chosen as Roboflow's server does.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.media.postprocess import rle_to_mask
from sam2serve.registry import REGISTRY
from tests.conftest import encode_image, photos

pytestmark = pytest.mark.slow

MODELS = ["sam2.1_hiera_tiny", "sam2_hiera_tiny"]
PHOTOS = list(photos())


def _pt(w: int, h: int, fx: float, fy: float, positive: bool = True) -> dict:
    return {"x": round(fx * w, 1), "y": round(fy * h, 1), "positive": positive}


def _box(w: int, h: int, cx: float, cy: float, fw: float, fh: float) -> dict:
    return {"x": cx * w, "y": cy * h, "width": fw * w, "height": fh * h}


def cases(w: int, h: int) -> dict[str, list[dict]]:
    return {
        "point": [{"points": [_pt(w, h, 0.5, 0.4)]}],
        "box": [{"box": _box(w, h, 0.5, 0.5, 0.4, 0.5)}],
        "point+box": [{"box": _box(w, h, 0.45, 0.5, 0.5, 0.6), "points": [_pt(w, h, 0.45, 0.5)]}],
        "negative": [
            {
                "points": [
                    _pt(w, h, 0.3, 0.3),
                    _pt(w, h, 0.7, 0.6, False),
                    _pt(w, h, 0.1, 0.9, False),
                ]
            }
        ],
        "several": [
            {"points": [_pt(w, h, 0.2, 0.2)]},
            {"box": _box(w, h, 0.6, 0.6, 0.3, 0.3)},
            {
                "box": _box(w, h, 0.4, 0.5, 0.5, 0.5),
                "points": [_pt(w, h, 0.4, 0.5), _pt(w, h, 0.2, 0.8, False)],
            },
            {"points": [_pt(w, h, 0.8, 0.2), _pt(w, h, 0.7, 0.3), _pt(w, h, 0.9, 0.1, False)]},
        ],
        "none": [],
    }


def reference_inputs(prompts: list[dict]) -> list[dict]:
    """Per-prompt predictor arguments, each prompt alone (never padded to its neighbours'
    token count); no prompt at all is one not-a-point token (label -1)."""
    rows = prompts or [{}]
    out = []
    for p in rows:
        pts = [(q["x"], q["y"]) for q in p.get("points", [])]
        labels = [int(q["positive"]) for q in p.get("points", [])]
        n_pad = 1 if not p.get("box") and not pts else 0
        pts += [(0.0, 0.0)] * n_pad
        labels += [-1] * n_pad
        box = None
        if p.get("box"):
            b = p["box"]
            box = np.array(
                [
                    b["x"] - b["width"] / 2,
                    b["y"] - b["height"] / 2,
                    b["x"] + b["width"] / 2,
                    b["y"] + b["height"] / 2,
                ],
                dtype=np.float32,
            )
        out.append(
            {
                "point_coords": np.array(pts, dtype=np.float32) if pts else None,
                "point_labels": np.array(labels, dtype=np.int32) if pts else None,
                "box": box,
            }
        )
    return out


@pytest.fixture(scope="module")
def fidelity_client(real_weights_dir: Path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from sam2serve.api.app import create_app
    from sam2serve.config import Settings
    from sam2serve.wiring import build_services

    settings = Settings(  # the exact fp32 path; the fast runtime has its own tolerance test
        weights_dir=real_weights_dir,
        allow_download=False,
        device="cpu",
        max_models=2,
        runtime="torch",
    )
    with TestClient(create_app(settings, build_services(settings))) as client:
        yield client


@pytest.fixture(scope="module")
def predictors(real_weights_dir: Path) -> dict:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2serve.runtime.torch_runtime import build_model

    return {
        model_id: SAM2ImagePredictor(
            build_model(
                REGISTRY[model_id], real_weights_dir / f"{model_id}.pt", torch.device("cpu")
            )
        )
        for model_id in MODELS
    }


def _server(client, model_id: str, image_id: str, prompts: list[dict], **extra: object):  # type: ignore[no-untyped-def]
    body = {"image_id": image_id, "sam2_version_id": model_id, "prompts": {"prompts": prompts}}
    body.update(extra)
    binary = client.post("/sam2/segment_image", json={**body, "format": "binary"})
    assert binary.status_code == 200, binary.text
    npz = np.load(io.BytesIO(binary.content), allow_pickle=False)
    rle = client.post("/sam2/segment_image", json={**body, "format": "rle"})
    assert rle.status_code == 200, rle.text
    preds = rle.json()["predictions"]
    masks = np.stack([rle_to_mask(p["masks"]) for p in preds])
    scores = np.array([p["confidence"] for p in preds])
    return npz["masks"], npz["low_res_masks"], masks, scores


def _reference(predictor, prompts: list[dict], mask_input=None, multimask: bool = True):  # type: ignore[no-untyped-def]
    full, low, scores = [], [], []
    for i, args in enumerate(reference_inputs(prompts)):
        mi = None if mask_input is None else mask_input[i : i + 1]
        masks, s, lows = predictor.predict(
            **args, mask_input=mi, multimask_output=multimask, return_logits=True
        )
        best = np.argsort(s)[-1]
        full.append(masks[best])
        low.append(lows[best])
        scores.append(s[best])
    return np.stack(full), np.stack(low), np.array(scores)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _assert_same(server, reference) -> None:  # type: ignore[no-untyped-def]
    full, low, masks, scores = server
    ref_full, ref_low, ref_scores = reference
    assert full.shape == ref_full.shape and low.shape == ref_low.shape
    for ours_mask, ours_full, ref in zip(masks, full, ref_full, strict=True):
        assert _iou(ours_mask, ref > 0) >= 0.999
        assert _iou(ours_full > 0, ref > 0) >= 0.999
    np.testing.assert_allclose(low, ref_low, atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


@pytest.mark.parametrize("model_id", MODELS)
@pytest.mark.parametrize("photo", PHOTOS)
def test_matches_reference_predictor(
    fidelity_client, predictors, model_id: str, photo: str
) -> None:  # type: ignore[no-untyped-def]
    rgb = photos()[photo]
    h, w = rgb.shape[:2]
    embed = fidelity_client.post(
        "/sam2/embed_image",
        json={"image": {"type": "base64", "value": encode_image(rgb)}, "sam2_version_id": model_id},
    )
    assert embed.status_code == 200, embed.text
    image_id = embed.json()["image_id"]
    predictor = predictors[model_id]
    predictor.set_image(rgb)

    for name, prompts in cases(w, h).items():
        server = _server(fidelity_client, model_id, image_id, prompts)
        try:
            _assert_same(server, _reference(predictor, prompts))
        except AssertionError as exc:
            raise AssertionError(f"prompt case {name!r}: {exc}") from exc

    single = cases(w, h)["point"]
    server = _server(fidelity_client, model_id, image_id, single, multimask_output=False)
    _assert_same(server, _reference(predictor, single, multimask=False))

    # refinement: the previous low-res logits as mask_input, with one more click
    previous = _server(fidelity_client, model_id, image_id, single)[1]
    refined = [{"points": [*single[0]["points"], _pt(w, h, 0.55, 0.45, False)]}]
    server = _server(
        fidelity_client, model_id, image_id, refined, mask_input=previous[:, None].tolist()
    )
    _assert_same(server, _reference(predictor, refined, mask_input=previous[:, None]))
