"""A small deterministic `Runtime` for unit tests of the service: the same protocol as the
torch and fast runtimes, no model, microseconds per call.

- embed: `Features` whose image_embed (1, 3, 1, 1) holds the image's per-channel means;
- decode: per prompt and candidate c, low-res logits (m x m) = a ramp centred on the
  prompt's first token (in low-res cells) plus the candidate index, plus the prompt's
  mask_input row where `has_mask` says so; scores are a permutation chosen by the prompt
  itself (its first token's x and its token count), so the best candidate differs between
  prompts and a prompt's answer never depends on its row or its neighbours (as with the real
  runtimes);
- upscale: bilinear interpolation to the original size, as the real runtimes do.

It records what it was given (`embedded`, `decoded`), and `hold_embeds` makes embed wait on
an event (to test that clicks do not queue behind embeds).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Decoded, Features, PromptBatch

LOW_RES = 8  # m: low-res mask side


class FakeRuntime:
    def __init__(self, model_id: str = "fake", *, low_res: int = LOW_RES) -> None:
        self.model_id = model_id
        self.device = torch.device("cpu")
        self._m = low_res
        self.embedded: list[tuple[int, int]] = []  # orig (H, W) of each embed call
        self.decoded: list[tuple[PromptBatch, bool]] = []
        self.hold_embeds: threading.Event | None = None

    @property
    def low_res_size(self) -> int:
        return self._m

    def embed(self, rgb: np.ndarray) -> Features:
        if self.hold_embeds is not None:
            assert self.hold_embeds.wait(timeout=30), "test never released the embed"
        self.embedded.append((int(rgb.shape[0]), int(rgb.shape[1])))
        means = torch.as_tensor(rgb.reshape(-1, 3).mean(axis=0), dtype=torch.float32)
        return Features(means.reshape(1, 3, 1, 1), (), (int(rgb.shape[0]), int(rgb.shape[1])))

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        self.decoded.append((prompts, multimask))
        return Decoded(*expected_decode(features, prompts, multimask, self._m))

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        up = functional.interpolate(low_res[:, None].float(), size=orig_hw, mode="bilinear")
        return up[:, 0]


def expected_decode(
    features: Features, prompts: PromptBatch, multimask: bool, m: int = LOW_RES
) -> tuple[torch.Tensor, torch.Tensor]:
    """What `FakeRuntime.decode` answers: (low_res (N, C, m, m), scores (N, C))."""
    n, c = len(prompts), 3 if multimask else 1
    h, w = features.orig_hw
    ys, xs = np.mgrid[0:m, 0:m].astype(np.float32)
    bias = float(features.image_embed.mean()) / 255.0
    low = np.zeros((n, c, m, m), dtype=np.float32)
    scores = np.zeros((n, c), dtype=np.float32)
    for i in range(n):
        x, y = prompts.coords[i, 0]
        cx, cy = x / w * m, y / h * m
        ramp = 2.0 - np.hypot(xs - cx, ys - cy) / 2.0
        k = int(x) + int((prompts.labels[i] >= 0).sum())
        for j in range(c):
            low[i, j] = ramp + j * 0.5 + bias
            scores[i, j] = ((k + 2 * j) % c + 1) / (c + 1)
        if prompts.mask_input is not None and (prompts.has_mask is None or prompts.has_mask[i]):
            low[i] += prompts.mask_input[i, 0]
    return torch.from_numpy(low), torch.from_numpy(scores)


class FakeFactory:
    """A `ModelPool` factory building `FakeRuntime`s; counts builds per model."""

    def __init__(self) -> None:
        self.built: list[str] = []
        self.runtimes: dict[str, FakeRuntime] = {}

    def __call__(self, spec: ModelSpec, checkpoint: Path, device: torch.device) -> FakeRuntime:
        self.built.append(spec.model_id)
        runtime = FakeRuntime(spec.model_id)
        self.runtimes[spec.model_id] = runtime
        return runtime
