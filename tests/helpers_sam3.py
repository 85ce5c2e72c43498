"""Shared by the SAM 3 API, SDK and CLI tests: one weights directory holding both tiny test
architectures (links to the session's `tiny_weights_dir` and `sam3_tiny_weights_dir` files),
and the registry that knows them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

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


def cli_png_locally_and_from(
    server: str, args: list[str], weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """Run the CLI `args` against `server` (--url) and then on a local model (the tiny test
    models from `weights`, as SAM2SERVE_* would name real ones); assert both succeed and
    wrote the same PNG, and return it."""
    from PIL import Image
    from typer.testing import CliRunner

    import sam2serve.wiring as wiring
    from sam2serve.cli.main import app
    from sam2serve.testing import TEST_MODEL_ID

    remote = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "url.png"), "--url", server])
    assert remote.exit_code == 0, remote.output
    monkeypatch.setattr(wiring, "REGISTRY", both_registries())
    for name, value in {
        "SAM2SERVE_WEIGHTS_DIR": str(weights), "SAM2SERVE_DEFAULT_MODEL": TEST_MODEL_ID,
        "SAM2SERVE_SAM3_MODEL": SAM3_TEST_MODEL_ID, "SAM2SERVE_DEVICE": "cpu",
        "SAM2SERVE_RUNTIME": "torch", "SAM2SERVE_ALLOW_DOWNLOAD": "false",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    local = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "local.png")])
    assert local.exit_code == 0, local.output
    url_png = np.asarray(Image.open(tmp_path / "url.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "local.png")), url_png)
    return url_png
