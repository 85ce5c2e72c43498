"""SAM 3's exact runtime equals Meta's `Sam3Processor` and `predict_inst` on the same seeded
random weights: the tiny architecture here (default run), the real one in the slow pass
(`test_sam3_fidelity_real.py`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.runtime.sam3_build import TINY
from sam2serve.runtime.sam3_runtime import Sam3Features, Sam3Runtime, build_sam3_runtime
from sam2serve.testing import sam3_tiny_spec
from tests.integration.sam3_reference import CPU, Prompt, Reference, assert_concept_equal


@pytest.fixture(scope="module")
def tiny(sam3_tiny_weights_dir: Path) -> tuple[Sam3Runtime, Reference]:
    spec = sam3_tiny_spec()
    checkpoint = sam3_tiny_weights_dir / spec.filename
    return build_sam3_runtime(spec, checkpoint, CPU), Reference(spec, checkpoint)


@pytest.fixture(scope="module")
def image(photo_set: dict[str, np.ndarray]) -> np.ndarray:
    return photo_set["coffee"][::2, ::2].copy()  # 200 x 300: not square, not the input size


@pytest.fixture(scope="module")
def embedded(tiny, image) -> tuple[Sam3Features, dict]:
    runtime, ref = tiny
    return runtime.embed(image), ref.set_image(image)


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


PROMPTS = {
    "text": Prompt("cup", _boxes(), np.zeros(0, bool)),
    "another phrase": Prompt("a red saucer", _boxes(), np.zeros(0, bool)),
    "one box": Prompt(None, _boxes((40.5, 30, 160, 120)), np.array([True])),
    "positive and negative boxes": Prompt(
        None, _boxes((40, 30, 160, 120), (180, 20, 290, 190)), np.array([True, False])
    ),
    "text and boxes": Prompt(
        "cup", _boxes((40, 30, 160, 120), (10, 100, 90, 199)), np.array([True, False])
    ),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_concept_equals_sam3_processor(tiny, embedded, name: str) -> None:
    runtime, ref = tiny
    features, state = embedded
    assert_concept_equal(runtime, features, ref, state, PROMPTS[name])


def test_several_prompts_on_one_image_each_equal_their_own_run(tiny, embedded) -> None:
    """Prompts in a row on the cached features: none leaks into the next (the processor is
    reset between them, the runtime keeps no state)."""
    runtime, ref = tiny
    features, state = embedded
    for name in ("text and boxes", "another phrase"):
        assert_concept_equal(runtime, features, ref, state, PROMPTS[name])


def test_features_are_what_set_image_computes(tiny, embedded) -> None:
    runtime, _ = tiny
    features, state = embedded
    backbone = state["backbone_out"]
    assert len(features.fpn) == len(backbone["backbone_fpn"]) == 3
    for ours, theirs in zip(features.fpn, backbone["backbone_fpn"], strict=True):
        assert torch.equal(ours, theirs)
    assert features.orig_hw == (state["original_height"], state["original_width"])
    assert features.nbytes == runtime.feature_nbytes


@pytest.mark.parametrize(
    ("points", "labels", "box", "multimask"),
    [
        ([[150, 100]], [1], None, True),
        ([[150, 100]], [1], None, False),
        ([[150, 100], [60, 40]], [1, 0], None, False),
        (None, None, [40, 30, 160, 120], False),
        ([[100, 80]], [1], [40, 30, 160, 120], True),
    ],
)
def test_interactive_equals_predict_inst(tiny, embedded, points, labels, box, multimask) -> None:
    runtime, ref = tiny
    features, state = embedded
    kwargs = {
        "point_coords": None if points is None else np.array(points, dtype=np.float32),
        "point_labels": None if labels is None else np.array(labels),
        "box": None if box is None else np.array(box, dtype=np.float32),
        "multimask_output": multimask,
    }
    masks, scores, low = runtime.interactive_full(
        features, kwargs["point_coords"], kwargs["point_labels"], kwargs["box"], None, multimask
    )
    want_masks, want_scores, want_low = ref.predict_inst(state, **kwargs)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(low, want_low)
    np.testing.assert_array_equal(masks, want_masks)
    assert (low > 0).any() and (low <= 0).any()  # the threshold decides something
    # and again with the previous answer as mask_input (refinement)
    best = low[int(np.argmax(scores))][None]
    masks2, scores2, low2 = runtime.interactive_full(
        features, kwargs["point_coords"], kwargs["point_labels"], kwargs["box"], best, False
    )
    kwargs.update(mask_input=best, multimask_output=False)
    want = ref.predict_inst(state, **kwargs)
    np.testing.assert_array_equal(scores2, want[1])
    np.testing.assert_array_equal(low2, want[2])
    np.testing.assert_array_equal(masks2, want[0])


def test_packed_image_unpacks_to_equal_features(tiny, image, embedded) -> None:
    """The compact shared-tier form (the trunk's output) gives back the same features bit for
    bit, and is what the docs say it is: the trunk's tensor plus a small header."""
    runtime, _ = tiny
    features, _ = embedded
    trunk = runtime.trunk(image)
    data = runtime.pack(trunk, features.orig_hw)
    assert len(data) < trunk.numel() * 4 + 1024
    back = runtime.unpack(data)
    assert back.orig_hw == features.orig_hw
    for ours, theirs in zip(back.tensors, features.tensors, strict=True):
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    with pytest.raises(ValueError):
        runtime.unpack(features.to_bytes())


def test_features_through_bytes_give_the_same_answers(tiny, embedded) -> None:
    """A value read back (another replica, the shared tier) answers bit for bit as the
    original: values and memory layout both survive (the heads' last bits depend on it)."""
    runtime, _ = tiny
    features, _ = embedded
    back = Sam3Features.from_bytes(features.to_bytes())
    [text] = runtime.encode_text(["cup"])
    boxes, labels = np.array([[40, 30, 160, 120]]), np.array([True])
    a = runtime.concept(features, text, boxes, labels)
    b = runtime.concept(back, text, boxes, labels)
    assert torch.equal(a.mask_logits, b.mask_logits)
    np.testing.assert_array_equal(a.scores, b.scores)
    point = (np.array([[150, 100]]), np.array([1]), None, None, True)
    for x, y in zip(
        runtime.interactive(features, *point), runtime.interactive(back, *point), strict=True
    ):
        np.testing.assert_array_equal(x, y)


def test_encoder_first_layer_comes_with_the_image_and_changes_nothing(tiny, embedded) -> None:
    """The fusion encoder's layer 0 self-attention is computed at embed (it reads the image
    alone); a prompt run from it equals one that recomputes it, bit for bit, and it is read:
    a wrong one changes the answer. (The tiny encoder has one layer; the real one's six, the
    cached first followed by five whole ones, are compared with Meta's in the slow pass.)"""
    runtime, _ = tiny
    features, _ = embedded
    assert features.encoder_first is not None
    assert tuple(features.encoder_first.shape) == TINY.first_shape()
    [text] = runtime.encode_text(["cup"])
    none = (np.zeros((0, 4)), np.zeros(0, bool))
    cached = runtime.concept(features, text, *none)
    recomputed = runtime.concept(replace(features, encoder_first=None), text, *none)
    np.testing.assert_array_equal(cached.scores, recomputed.scores)
    np.testing.assert_array_equal(cached.boxes_xyxy, recomputed.boxes_xyxy)
    assert torch.equal(cached.mask_logits, recomputed.mask_logits)
    wrong = replace(features, encoder_first=torch.zeros_like(features.encoder_first))
    assert not np.array_equal(runtime.concept(wrong, text, *none).scores, cached.scores)
