"""SAM 3 checkpoints: Meta's sam3.pt layout loaded strictly with weights_only, through the
model pool (lazily, by family), and clear 503s for anything else."""

from __future__ import annotations

import asyncio
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from sam2serve.runtime.pool import ModelPool
from sam2serve.runtime.sam3_runtime import Sam3Runtime, load_model
from sam2serve.runtime.weights import WeightsError
from sam2serve.testing import sam3_tiny_spec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def state(sam3_tiny_weights_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(sam3_tiny_weights_dir / sam3_tiny_spec().filename, weights_only=True)


def test_checkpoint_is_in_meta_layout(state: dict[str, torch.Tensor]) -> None:
    prefixes = {key.split(".", 1)[0] for key in state}
    assert prefixes == {"detector", "tracker"}
    assert "detector.backbone.language_backbone.encoder.positional_embedding" in state
    assert "tracker.sam_mask_decoder.conv_s0.weight" in state


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda s: s.pop("detector.transformer.decoder.query_embed.weight"), "1 missing"),
        (lambda s: s.__setitem__("tracker.extra.weight", torch.zeros(1)), "1 unexpected"),
    ],
)
def test_a_checkpoint_that_does_not_match_is_a_503(state, tmp_path: Path, edit, says) -> None:  # type: ignore[no-untyped-def]
    spec = sam3_tiny_spec()
    changed = dict(state)
    edit(changed)
    path = tmp_path / spec.filename
    torch.save(changed, path)
    with pytest.raises(WeightsError) as err:
        load_model(spec, path, CPU)
    assert says in str(err.value) and spec.filename in str(err.value)


def test_a_pickle_is_refused(tmp_path: Path) -> None:
    spec = sam3_tiny_spec()
    path = tmp_path / spec.filename
    path.write_bytes(pickle.dumps({"detector.x": print}))
    with pytest.raises(WeightsError, match="unreadable"):
        load_model(spec, path, CPU)


def test_pool_loads_sam3_by_family_and_never_downloads(
    sam3_tiny_weights_dir: Path, tmp_path: Path
) -> None:
    spec = sam3_tiny_spec()
    empty = ModelPool(tmp_path, CPU, allow_download=True)
    with pytest.raises(WeightsError, match="gated"):
        asyncio.run(empty.get(spec))
    weights = tmp_path / "w"
    weights.mkdir()
    shutil.copy(sam3_tiny_weights_dir / spec.filename, weights / spec.filename)
    pool = ModelPool(weights, CPU, allow_download=False)
    runtime = asyncio.run(pool.get(spec))
    assert isinstance(runtime, Sam3Runtime) and pool.loaded == [spec.model_id]
    assert pool.describe()[spec.model_id] == {"runtime": "Sam3Runtime", "precision": "fp32"}
