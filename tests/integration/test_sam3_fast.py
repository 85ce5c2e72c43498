"""SAM 3's fast CPU path (the ViT trunk on OpenVINO) against the exact runtime on the same
seeded random weights: within `sam3_fast.TOLERANCE` at each precision the CPU computes, the
rest of the pipeline unchanged. Marked `openvino` (slow pass: one trunk export per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.runtime.openvino_export import probe
from sam2serve.runtime.sam3_fast import TOLERANCE, build_sam3_fast_runtime
from sam2serve.runtime.sam3_runtime import Sam3Runtime, build_sam3_runtime
from sam2serve.testing import sam3_tiny_spec

pytestmark = pytest.mark.openvino
CPU = torch.device("cpu")
PRECISIONS = ["f32", "bf16"] if probe("auto") == "bf16" else ["f32"]


@pytest.fixture(scope="module")
def exact(sam3_tiny_weights_dir: Path) -> Sam3Runtime:
    spec = sam3_tiny_spec()
    return build_sam3_runtime(spec, sam3_tiny_weights_dir / spec.filename, CPU)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fast_trunk_within_tolerance(
    exact: Sam3Runtime, sam3_tiny_weights_dir: Path, tmp_path_factory, photo_set, precision: str
) -> None:
    spec = sam3_tiny_spec()
    cache = tmp_path_factory.getbasetemp() / "sam3-fast-cache"
    fast = build_sam3_fast_runtime(spec, sam3_tiny_weights_dir / spec.filename, cache, precision)
    assert fast.precision == precision
    rgb = photo_set["chelsea"]
    want, got = exact.trunk(rgb), fast.trunk(rgb)
    assert got.shape == want.shape and got.stride() == want.stride()
    rel = float((got - want).norm() / want.norm())
    assert rel <= TOLERANCE[precision]["trunk_rel"]
    assert rel > 0 or precision == "f32"  # bf16 really computes in bf16
    orig_hw = rgb.shape[:2]
    fa, fb = exact.expand(want, orig_hw), fast.expand(got, orig_hw)
    [text] = exact.encode_text(["cat"])
    boxes, labels = np.array([[50, 40, 300, 250]]), np.array([True])
    a = exact.concept(fa, text, boxes, labels)
    b = fast.concept(fb, text, boxes, labels)
    assert float(np.abs(a.scores - b.scores).max()) <= TOLERANCE[precision]["score_abs"]
    keep = np.flatnonzero(a.scores > np.quantile(a.scores, 0.9))
    ma, mb = exact.masks(fa, a, keep), fast.masks(fb, b, keep)
    assert ma.any(axis=(1, 2)).all()
    iou = (ma & mb).sum(axis=(1, 2)) / (ma | mb).sum(axis=(1, 2))
    assert float(iou.min()) >= TOLERANCE[precision]["mask_iou_min"]
    # and the fast runtime's own embed is its trunk + the exact necks
    for x, y in zip(fast.embed(rgb).tensors, fb.tensors, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("torch", "Sam3Runtime"),
        ("auto", "Sam3FastRuntime" if PRECISIONS[-1] == "bf16" else "Sam3Runtime"),
        ("openvino-f32", "Sam3FastRuntime"),
    ],
)
def test_settings_pick_the_sam3_runtime(
    sam3_tiny_weights_dir: Path, tmp_path_factory, runtime: str, expected: str
) -> None:
    from sam2serve.config import Settings
    from sam2serve.runtime.factory import sam3_factory

    settings = Settings(
        runtime=runtime, runtime_cache_dir=tmp_path_factory.getbasetemp() / "sam3-fast-cache"
    )
    spec = sam3_tiny_spec()
    built = sam3_factory(settings)(spec, sam3_tiny_weights_dir / spec.filename, CPU)
    assert type(built).__name__ == expected
