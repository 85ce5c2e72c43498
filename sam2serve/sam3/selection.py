"""Which of SAM 3's proposals a concept request answers: pure functions over scores, boxes
and masks, no model.

Per prompt, every query whose score is over the prompt's threshold is a candidate (strictly
over, as Meta's `Sam3Processor` keeps them). Candidates are then taken best score first,
over all prompts together:

- with cross-prompt NMS (`nms_iou`): a candidate whose mask overlaps an already kept one
  (of any prompt) by IoU > `nms_iou` is dropped, as Roboflow's greedy mask NMS does;
- a prompt that already has `per_prompt_cap` instances takes no more;
- the request keeps at most `max_masks` masks in all (the output-mask budget).

While no cap is reached this is exactly threshold-then-NMS; a candidate left out by a cap
takes no part in NMS. Each prompt's answer is best score first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """Query `query` of prompt `prompt`, with its score (sigmoid(logit) x presence)."""

    prompt: int
    query: int
    score: float


@dataclass
class Selection:
    """What a request answers: per prompt, (query, score, mask) best first; how many were
    over the threshold; why a prompt got fewer (None: it got all of them)."""

    kept: list[list[tuple[int, float, np.ndarray]]]
    found: list[int]
    notes: list[str | None] = field(default_factory=list)


def candidates(scores: Sequence[np.ndarray], thresholds: Sequence[float]) -> list[Candidate]:
    """scores[p]: (Q,) float of prompt p -> every score strictly over its threshold, best
    first (ties: lower prompt, then lower query first)."""
    found = [
        Candidate(p, int(q), float(s[q]))
        for p, (s, t) in enumerate(zip(scores, thresholds, strict=True))
        for q in np.flatnonzero(np.asarray(s) > t)
    ]
    return sorted(found, key=lambda c: (-c.score, c.prompt, c.query))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; 0 when both are empty."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def max_masks_for(budget: int, hw: tuple[int, int]) -> int | None:
    """Masks of `hw` pixels that fit in `budget` mask pixels (None: no budget, <= 0)."""
    if budget <= 0:
        return None
    return budget // max(1, hw[0] * hw[1])


def select(
    found: list[Candidate],
    n_prompts: int,
    mask_of: Callable[[Candidate], np.ndarray],
    *,
    nms_iou: float | None,
    per_prompt_cap: int,
    max_masks: int | None,
) -> Selection:
    """Take `found` (best first, from `candidates`) under NMS and the caps (module docs).

    `mask_of(candidate)`: its (H, W) bool mask, asked only for candidates that can still be
    answered (never for one a cap leaves out)."""
    kept: list[list[tuple[int, float, np.ndarray]]] = [[] for _ in range(n_prompts)]
    per_prompt = [0] * n_prompts
    for c in found:
        per_prompt[c.prompt] += 1
    capped = [False] * n_prompts
    budget_hit = [False] * n_prompts
    total = 0
    kept_masks: list[np.ndarray] = []
    for c in found:
        if len(kept[c.prompt]) >= per_prompt_cap:
            capped[c.prompt] = True
            continue
        if max_masks is not None and total >= max_masks:
            budget_hit[c.prompt] = True
            continue
        mask = mask_of(c)
        if nms_iou is not None and any(mask_iou(mask, m) > nms_iou for m in kept_masks):
            per_prompt[c.prompt] -= 1  # suppressed: a duplicate, not an instance left out
            continue
        kept[c.prompt].append((c.query, c.score, mask))
        if nms_iou is not None:
            kept_masks.append(mask)
        total += 1
    notes = [
        _note(n, len(k), cap_hit, budget, per_prompt_cap)
        for n, k, cap_hit, budget in zip(per_prompt, kept, capped, budget_hit, strict=True)
    ]
    return Selection(kept, per_prompt, notes)


def _note(found: int, kept: int, capped: bool, budget: bool, cap: int) -> str | None:
    if kept >= found or not (capped or budget):
        return None
    if budget:
        return (
            f"{found} instances found, {kept} answered: the request reached the output-mask "
            "budget (SAM2SERVE_MAX_MASK_PIXELS); send fewer prompts per request, raise "
            "the threshold, or downscale the image"
        )
    return (
        f"{found} instances found, the best {kept} answered: at most {cap} per prompt "
        "(SAM2SERVE_SAM3_MAX_INSTANCES_PER_PROMPT); raise the threshold to get fewer"
    )
