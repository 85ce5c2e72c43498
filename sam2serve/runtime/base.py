"""The runtime seam: what every runtime (the torch runtime, faster ones) takes and returns.

A runtime is stateless per image: `embed` turns pixels into `Features`, `decode` turns
features + a batch of prompts into low-resolution logits and scores. Nothing here imports
SAM2 internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

# Prompt token labels, as SAM2's prompt encoder reads them.
LABEL_PAD = -1
LABEL_NEGATIVE = 0
LABEL_POSITIVE = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


@dataclass(frozen=True)
class Features:
    """Per-image encoder output, ready for the mask decoder.

    image_embed: (1, C, h, w) — lowest-resolution features (C=256, h=w=64 at 1024 input)
    high_res: (1, 32, 4h, 4w) and (1, 64, 2h, 2w) — skip features for the mask decoder
    orig_hw: the original image's (height, width) in pixels
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res)
        return sum(t.element_size() * t.nelement() for t in tensors)


@dataclass(frozen=True)
class PromptBatch:
    """N prompts padded to K tokens each, in original-image pixel coordinates.

    coords: (N, K, 2) float32 x, y; box corners come first (labels 2, 3), then points
    labels: (N, K) int32 — 1 positive, 0 negative, 2/3 box corners, -1 padding
    mask_input: (N, 1, m, m) float32 low-res logits of an earlier prediction, or None
    has_mask: (N,) bool — which rows of mask_input are real; None means all of them
    """

    coords: np.ndarray
    labels: np.ndarray
    mask_input: np.ndarray | None = None
    has_mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def with_masks(self, saved: tuple[np.ndarray, np.ndarray] | None) -> PromptBatch:
        """This batch with (mask_input (N, 1, m, m), has_mask (N,)), if any were found."""
        if saved is None:
            return self
        return PromptBatch(self.coords, self.labels, saved[0], saved[1])


@dataclass(frozen=True)
class Decoded:
    """low_res: (N, C, m, m) float32 logits, unclamped; scores: (N, C) predicted IoU."""

    low_res: torch.Tensor
    scores: torch.Tensor


class Runtime(Protocol):
    """What the service needs from a model runtime."""

    model_id: str
    device: torch.device

    @property
    def low_res_size(self) -> int: ...

    def embed(self, rgb: np.ndarray) -> Features:
        """rgb: (H, W, 3) uint8 -> Features."""
        ...

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        """All prompts in one batched decoder call."""
        ...

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, m, m) logits -> (N, H, W) float32 logits at the original resolution."""
        ...
