"""First use of the fast runtime: served on the exact path while it is prepared, switched
when ready, staying exact when preparation fails; one export per cache dir however many
builders race for it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.runtime import openvino_export as ovx
from sam2serve.runtime.base import Decoded, Features, PromptBatch
from sam2serve.runtime.preparing import PreparingRuntime
from sam2serve.testing import tiny_test_spec


class Named:
    """A runtime that says who served each call."""

    model_id = "m"
    device = torch.device("cpu")
    low_res_size = 4

    def __init__(self, name: str, dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.dtype = dtype
        self.decoded_dtypes: list[torch.dtype] = []

    def embed(self, rgb: np.ndarray) -> Features:
        return Features(torch.zeros(1, 1, dtype=self.dtype), (), (int(rgb.shape[0]), 1))

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        self.decoded_dtypes.append(features.image_embed.dtype)
        return Decoded(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1))

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return torch.zeros(1, *orig_hw)


class Fast(Named):
    precision = "bf16"


BATCH = PromptBatch(np.zeros((1, 1, 2), np.float32), np.ones((1, 1), np.int32))


def test_serves_exact_until_the_fast_runtime_is_ready() -> None:
    release = threading.Event()
    exact, fast = Named("exact"), Fast("fast", torch.bfloat16)

    def build() -> Fast:
        release.wait(10)
        return fast

    runtime = PreparingRuntime(exact, build, "m")
    assert runtime.preparing and "first use: preparing the fast runtime" in runtime.detail
    assert runtime.active is exact
    bf16 = fast.embed(np.zeros((3, 1, 3), np.uint8))
    runtime.decode(bf16, BATCH, True)  # fast-runtime features on the exact path: as f32
    assert exact.decoded_dtypes == [torch.float32]
    assert not hasattr(runtime, "precision")  # the torch path has none
    release.set()
    assert runtime.wait(10) and not runtime.preparing
    assert runtime.active is fast and runtime.precision == "bf16"
    f32 = exact.embed(np.zeros((3, 1, 3), np.uint8))  # embedded before the switch
    runtime.decode(f32, BATCH, True)
    assert fast.decoded_dtypes == [torch.float32]
    assert not hasattr(runtime, "embed_batch")  # never bind a batcher to a changing runtime


def test_a_failed_preparation_stays_exact() -> None:
    exact = Named("exact")

    def build() -> Named:
        raise RuntimeError("no plugin")

    runtime = PreparingRuntime(exact, build, "m")
    assert runtime.wait(10)
    assert runtime.active is exact and runtime.failed == "RuntimeError: no plugin"


def test_concurrent_builders_export_once(
    tiny_weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_test_spec()
    checkpoint = tiny_weights_dir / spec.filename
    exports: list[int] = []

    def fake_save(target: Path, *_: object) -> None:
        exports.append(threading.get_ident())
        time.sleep(0.3)  # long enough for every other builder to arrive meanwhile
        target.mkdir()
        (target / "meta.json").write_text("{}")

    monkeypatch.setattr(ovx, "_image_graphs", lambda spec, checkpoint: {})
    monkeypatch.setattr(ovx, "_save", fake_save)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ovx.build_cache(spec, checkpoint, tmp_path)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(exports) == 1
    assert len(results) == 4 and len(set(results)) == 1
    assert ovx.is_exported(spec, checkpoint, tmp_path)
