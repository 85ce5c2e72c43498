"""A segment request's prompts -> the runtime's padded `PromptBatch` (with the client's
`mask_input`, checked here before any image work), and each prompt's identity for the saved
logits (`PromptKey`, matched by `sam2serve.store.logits`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from sam2serve.errors import BadRequest
from sam2serve.image.schema import Prompt, SegmentRequest
from sam2serve.runtime.base import (
    LABEL_BOX_BOTTOM_RIGHT,
    LABEL_BOX_TOP_LEFT,
    LABEL_NEGATIVE,
    LABEL_PAD,
    LABEL_POSITIVE,
    PromptBatch,
)
from sam2serve.store.logits import PromptKey


def request_batch(request: SegmentRequest) -> tuple[PromptBatch, list[PromptKey]]:
    """The request's prompts as one padded batch (mask_input (N, 1, m, m) when the client
    sent one) and each prompt's key. The mask side `m` is checked against the model later
    (`decoding.check_mask_input`); everything else about mask_input is checked here."""
    prompts = request.prompt_list()
    batch = to_batch(prompts)
    if request.mask_input is not None:
        masks = parse_mask_input(request.mask_input, len(batch))
        batch = PromptBatch(batch.coords, batch.labels, masks, None)
    return batch, [prompt_key(p) for p in prompts]


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


def parse_mask_input(raw: list, n_prompts: int) -> np.ndarray:
    """(N, 1, m, m) float32 from (N, m, m), (N, 1, m, m), or one (m, m) / (1, m, m) mask
    broadcast to N: finite numbers, square masks, one per prompt."""
    advice = (
        "mask_input must be finite numeric logits of shape (N, m, m), N = number of prompts, "
        "m the model's low-res mask size (the low_res_masks of an earlier binary response)"
    )
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadRequest(advice, field="mask_input") from exc
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[0] == 1 and n_prompts > 1:
        arr = np.repeat(arr, n_prompts, axis=0)
    if (
        arr.ndim != 3
        or arr.shape[0] != n_prompts
        or arr.shape[1] != arr.shape[2]
        or not np.isfinite(arr).all()
    ):
        raise BadRequest(f"mask_input has shape {list(arr.shape)}: {advice}", field="mask_input")
    return arr[:, None]
