"""Request prompts -> the runtime's padded `PromptBatch`, and each prompt's identity for the
saved logits (`PromptKey`, matched by `sam2serve.store.logits`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from sam2serve.image.schema import Prompt
from sam2serve.runtime.base import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_NEGATIVE,
    LABEL_PAD,
    LABEL_POSITIVE,
    PromptBatch,
)
from sam2serve.store.logits import PromptKey


def to_batch(prompts: Sequence[Prompt]) -> PromptBatch:
    """Pad every prompt to the same token count with not-a-point tokens (label -1).

    Box corners come first (labels 2, 3), then points, as SAM2ImagePredictor orders them.
    No prompts at all gives one prediction from a single not-a-point token, as
    Roboflow's server does.
    """
    rows = list(prompts) or [Prompt()]
    width = max(1, *(p.token_count() for p in rows))
    coords = np.zeros((len(rows), width, 2), dtype=np.float32)
    labels = np.full((len(rows), width), LABEL_PAD, dtype=np.int32)
    for i, prompt in enumerate(rows):
        tokens: list[tuple[float, float, int]] = []
        if prompt.box is not None:
            x1, y1, x2, y2 = prompt.box.corners()
            tokens += [(x1, y1, LABEL_BOX_TOP_LEFT), (x2, y2, LABEL_BOX_BOTTOM_RIGHT)]
        for point in prompt.points or []:
            tokens.append((point.x, point.y, LABEL_POSITIVE if point.positive else LABEL_NEGATIVE))
        for j, (x, y, label) in enumerate(tokens):
            coords[i, j] = (x, y)
            labels[i, j] = label
    return PromptBatch(coords=coords, labels=labels)


def prompt_key(prompt: Prompt) -> PromptKey:
    box = prompt.box.corners() if prompt.box is not None else None
    points = Counter((p.x, p.y, p.positive) for p in prompt.points or [])
    return (box, frozenset(points.items()))
