"""Shared by the SAM 3 API, SDK and CLI tests: one weights directory holding both tiny test
architectures (links to the session's `tiny_weights_dir` and `sam3_tiny_weights_dir` files),
and the registry that knows them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2serve.registry import ModelSpec
from sam2serve.testing import (
    SAM3_TEST_MODEL_ID,
    registry_with_test_model,
    sam3_registry_with_test_model,
    sam3_tiny_spec,
    tiny_test_spec,
)
from tests.conftest import tiny_settings


def both_registries() -> dict[str, ModelSpec]:
    """The official ids of both families plus the tiny SAM 2 and SAM 3 test models."""
    return {**registry_with_test_model(), **sam3_registry_with_test_model()}


def link_weights(target: Path, sam2_dir: Path, sam3_dir: Path) -> Path:
    """`target` with the tiny SAM 2 and SAM 3 checkpoints linked in; returns it."""
    target.mkdir(parents=True, exist_ok=True)
    for spec, source in ((tiny_test_spec(), sam2_dir), (sam3_tiny_spec(), sam3_dir)):
        (target / spec.filename).symlink_to(source / spec.filename)
    return target


def sam3_settings(weights_dir: Path, **overrides: object):  # type: ignore[no-untyped-def]
    """`tiny_settings` with the tiny SAM 3 model as the /sam3 routes' default."""
    return tiny_settings(weights_dir, sam3_model=SAM3_TEST_MODEL_ID, **overrides)


def threshold_in_band(scores: Sequence[np.ndarray], at_least: int = 1, at_most: int = 4) -> float:
    """One score threshold that `at_least` to `at_most` (and not all) of every prompt's
    instance `scores` pass (random weights score each phrase in its own narrow band)."""
    for candidate in np.sort(np.concatenate(scores))[::-1][1:]:
        threshold = float(candidate) - 1e-6
        passing = [int((s > threshold).sum()) for s in scores]
        if all(
            at_least <= n < min(len(s), at_most + 1) for n, s in zip(passing, scores, strict=True)
        ):
            return threshold
    raise AssertionError(f"no threshold inside every prompt's band: {scores}")
