"""Request prompts -> the runtime's padded `PromptBatch`, and prompt-set identity for the
logits cache (which earlier prompt set is a strict subset of this one)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from sam2serve.runtime.base import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_NEGATIVE,
    LABEL_PAD,
    LABEL_POSITIVE,
    PromptBatch,
)
from sam2serve.image.schema import Prompt

# (box corners or None, multiset of points) — hashable identity of one prompt
PromptKey = tuple[tuple[float, float, float, float] | None, frozenset]


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


def _contains(super_key: PromptKey, sub_key: PromptKey) -> bool:
    if super_key[0] != sub_key[0]:
        return False
    have = dict(super_key[1])
    return all(have.get(point, 0) >= count for point, count in sub_key[1])


def match_subset(
    earlier: Sequence[PromptKey], current: Sequence[PromptKey]
) -> list[int | None] | None:
    """If `earlier` is a strict subset of `current`, map each current prompt to the earlier
    prompt it extends (or None for new prompts); else None.

    Each earlier prompt must be contained (same box, points a sub-multiset) in a distinct
    current prompt, and the two sets must differ.
    """
    if list(earlier) == list(current) or len(earlier) > len(current):
        return None
    mapping: list[int | None] = [None] * len(current)
    for e_idx, e_key in enumerate(earlier):
        for c_idx, c_key in enumerate(current):
            if mapping[c_idx] is None and _contains(c_key, e_key):
                mapping[c_idx] = e_idx
                break
        else:
            return None
    return mapping


def point_count(keys: Sequence[PromptKey]) -> int:
    return sum(count for key in keys for _, count in key[1]) + sum(
        2 for key in keys if key[0] is not None
    )
