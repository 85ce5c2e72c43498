"""Segment-everything on the fast (OpenVINO) runtime vs the exact torch runtime.

Stated tolerance: at least 95% of the exact path's masks have a match at IoU >= 0.9, and the
number of masks is within 10%. (The exact path itself equals Meta's generator, see
test_everything_fidelity.) OpenVINO runs bf16 where the CPU has it, else f32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.everything.generator import generate
from sam2serve.everything.schema import EverythingParams
from sam2serve.runtime.openvino_runtime import load_runtime
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
from sam2serve.testing import tiny_test_spec
from tests.conftest import photos
from tests.integration.test_everything_fidelity import BASE

pytestmark = pytest.mark.slow


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_fast_runtime_within_tolerance(
    tiny_weights_dir: Path, runtime_cache_dir: Path, photo: str
) -> None:
    spec = tiny_test_spec()
    checkpoint = tiny_weights_dir / spec.filename
    exact = TorchRuntime(
        spec.model_id, build_model(spec, checkpoint, torch.device("cpu")), torch.device("cpu")
    )
    fast = load_runtime(spec, checkpoint, runtime_cache_dir)
    params = EverythingParams(**BASE)
    image = photos()[photo]
    ref = generate(exact, params, rgb=image)
    got = generate(fast, params, rgb=image)
    assert len(ref) >= 10
    assert abs(len(got) - len(ref)) <= 0.1 * len(ref)
    matched = sum(1 for r in ref if any(_iou(r.mask, g.mask) >= 0.9 for g in got))
    assert matched >= 0.95 * len(ref), f"{matched} of {len(ref)} masks matched"
