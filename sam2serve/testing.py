"""Test and benchmark support only: seeded random SAM2 checkpoints in Meta's format, the tiny
test architecture, a readiness wait. Needs the [server] extra (torch); no module of the
package imports it (an import contract in pyproject.toml says so).

Real weights cannot be fetched everywhere (CI has no internet), so tests build the real
architectures with seeded random weights, save them as `{"model": state_dict}` under the
official file name, and point the weights directory at them.
"""

from __future__ import annotations

import dataclasses
import subprocess
import time
from pathlib import Path

import httpx
import torch

from sam2serve.registry import REGISTRY, SAM3_REGISTRY, ModelSpec
from sam2serve.runtime.bf16_attention import Bf16Attention
from sam2serve.runtime.torch_runtime import build_model

# A small architecture for fast tests: SAM 2.1 tiny with 256 px input and five blocks
# (embeds in ~0.1 s on CPU). Low-res masks are 64x64 instead of 256x256.
TINY_TEST_OVERRIDES: tuple[str, ...] = (
    "++model.image_size=256",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
)

TEST_MODEL_ID = "test_tiny"


def tiny_test_spec() -> ModelSpec:
    base = REGISTRY["sam2.1_hiera_tiny"]
    return dataclasses.replace(
        base,
        model_id=TEST_MODEL_ID,
        filename=f"{TEST_MODEL_ID}.pt",
        url="https://invalid.example/test_tiny.pt",
        size_mb=0,
        overrides=TINY_TEST_OVERRIDES,
    )


def registry_with_test_model() -> dict[str, ModelSpec]:
    """The official registry plus the tiny test architecture."""
    return {**REGISTRY, TEST_MODEL_ID: tiny_test_spec()}


def write_random_checkpoint(spec: ModelSpec, weights_dir: Path, seed: int = 0) -> Path:
    """Build `spec`'s architecture with seeded random weights and save it as Meta does."""
    torch.manual_seed(seed)
    model = build_model(spec, checkpoint=None, device=torch.device("cpu"))
    _randomize_zero_inits(model, seed)
    path = Path(weights_dir) / spec.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)
    return path


def _randomize_zero_inits(model: torch.nn.Module, seed: int) -> None:
    """Some SAM2 parameters start at exactly zero (embeddings meant to be learned). Give
    them small seeded values so every weight influences the output, as trained ones do."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() and not torch.any(param):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


SAM3_TEST_MODEL_ID = "sam3_test_tiny"


def sam3_tiny_spec() -> ModelSpec:
    """SAM 3's architecture at the tiny sizes (`runtime.sam3_build.TINY`: 224 px input, a
    2-block ViT, 2-layer text encoder): build ~4 s, embed ~0.2 s, one prompt ~0.2 s on CPU."""
    return dataclasses.replace(
        SAM3_REGISTRY["sam3"],
        model_id=SAM3_TEST_MODEL_ID,
        config="tiny",
        filename=f"{SAM3_TEST_MODEL_ID}.pt",
        size_mb=0,
    )


def sam3_registry_with_test_model() -> dict[str, ModelSpec]:
    """The official SAM 3 registry plus the tiny test architecture."""
    return {**SAM3_REGISTRY, SAM3_TEST_MODEL_ID: sam3_tiny_spec()}


def random_sam3_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """`spec`'s SAM 3 architecture with seeded random weights, on CPU, eval mode: torch's
    default init, plus a seeded init for what Meta's builder leaves `torch.empty` and for
    parameters that start at exactly zero (so that every weight matters)."""
    from sam2serve.runtime.sam3_build import seed_uninitialized
    from sam2serve.runtime.sam3_runtime import load_model

    torch.manual_seed(seed)
    model = load_model(spec, None, torch.device("cpu"))
    seed_uninitialized(model, seed)
    _randomize_zero_inits(model, seed)
    return model


def write_random_sam3_checkpoint(spec: ModelSpec, weights_dir: Path, seed: int = 0) -> Path:
    """Seeded random SAM 3 weights saved in Meta's `sam3.pt` layout ("detector." and
    "tracker." keys) under `spec.filename`; `spec.config` picks the size ("tiny" | "real")."""
    from sam2serve.runtime.sam3_build import checkpoint_state

    model = random_sam3_model(spec, seed)
    path = Path(weights_dir) / spec.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_state(model), path)
    return path


def wait_until_ready(
    url: str, proc: subprocess.Popen, timeout_s: float, *, poll_s: float = 0.2
) -> None:
    """Poll `url`/readyz until 200; RuntimeError if `proc` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout_s:g} s")
        time.sleep(poll_s)


class CountingAttention(Bf16Attention):
    """The bf16 attention kernel routing every plain call (`min_tokens=1`: the tiny configs'
    sequences are shorter than the real ones' threshold), counting them."""

    def __init__(self) -> None:
        super().__init__(threads=2, min_tokens=1)
        self.calls = 0

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().__call__(q, k, v)
