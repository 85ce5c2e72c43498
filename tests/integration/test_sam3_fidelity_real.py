"""SAM 3's real architecture (~840 M parameters) with seeded random weights saved as sam3.pt:
our builder + strict loader give Meta's `build_sam3_image_model` + `_load_checkpoint` model
exactly, and the exact runtime equals `Sam3Processor` / `predict_inst` on a 600 x 400 photo
(text, exemplar boxes, both, several prompts in a row; points and boxes). Slow pass only
(~3-4 min on 2 cores, ~10 GB peak: two real models side by side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.registry import SAM3_REGISTRY
from sam2serve.runtime.sam3_build import REAL, bpe_path
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_runtime import Sam3Features, Sam3Runtime, build_sam3_runtime
from tests.integration.sam3_reference import CPU, Prompt, Reference, assert_concept_equal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real(sam3_real_weights_dir: Path) -> tuple[Sam3Runtime, Reference]:
    from sam3.model_builder import build_sam3_image_model

    spec = SAM3_REGISTRY["sam3"]
    checkpoint = sam3_real_weights_dir / spec.filename
    runtime = build_sam3_runtime(spec, checkpoint, CPU)
    with on_device(CPU):
        meta = build_sam3_image_model(
            bpe_path=str(bpe_path()),
            device="cpu",
            checkpoint_path=str(checkpoint),
            load_from_HF=False,
            enable_inst_interactivity=True,
        )
    return runtime, Reference(spec, checkpoint, model=meta)


@pytest.fixture(scope="module")
def embedded(real, photo_set) -> tuple[np.ndarray, Sam3Features, dict]:
    runtime, ref = real
    rgb = photo_set["coffee"]  # 400 x 600
    return rgb, runtime.embed(rgb), ref.set_image(rgb)


def test_our_build_and_load_is_metas(real) -> None:
    runtime, ref = real
    ours, theirs = runtime.model.state_dict(), ref.model.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        assert value.shape == theirs[key].shape and torch.equal(value, theirs[key]), key
    n_params = sum(p.numel() for p in runtime.model.parameters())
    assert 800e6 < n_params < 900e6
    assert runtime.num_queries == 200 and runtime.low_res_size == 288


def test_features_and_their_size(real, embedded) -> None:
    runtime, _ = real
    _, features, state = embedded
    for ours, theirs in zip(features.fpn, state["backbone_out"]["backbone_fpn"], strict=True):
        assert torch.equal(ours, theirs)
    assert features.nbytes == runtime.feature_nbytes == REAL.feature_nbytes() == 138_018_816


BOXES = np.array([[120, 60, 330, 260], [380, 200, 590, 395]], dtype=np.float64)


def test_concept_prompts_in_a_row_equal_sam3_processor(real, embedded) -> None:
    """Text, exemplar boxes (positive + negative), and both, one after the other on the
    same cached image: each equals Meta's processor, pre-threshold and final masks."""
    runtime, ref = real
    _, features, state = embedded
    for prompt in (
        Prompt("cup", np.zeros((0, 4)), np.zeros(0, bool)),
        Prompt(None, BOXES, np.array([True, False])),
        Prompt("a red saucer", BOXES[:1], np.array([True])),
    ):
        assert_concept_equal(runtime, features, ref, state, prompt)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"point_coords": [[300, 200]], "point_labels": [1], "multimask_output": True},
        {"box": [120, 60, 330, 260], "multimask_output": False},
    ],
)
def test_interactive_equals_predict_inst(real, embedded, kwargs) -> None:
    runtime, ref = real
    _, features, state = embedded
    args = {k: np.asarray(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    masks, scores, low = runtime.interactive_full(
        features,
        args.get("point_coords"),
        args.get("point_labels"),
        args.get("box"),
        None,
        args["multimask_output"],
    )
    want = ref.predict_inst(state, **args)
    np.testing.assert_array_equal(scores, want[1])
    np.testing.assert_array_equal(low, want[2])
    np.testing.assert_array_equal(masks, want[0])
    assert low.shape[-2:] == (288, 288)
    assert (low > 0).any() and (low <= 0).any()
