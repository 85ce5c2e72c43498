"""Decoding a request's prompts: grouped by token count, best mask per prompt, full-resolution
logits one prompt at a time, the per-request mask budget, and the answer in the request's
format (`click`, the whole decode step of a segment request).

SAM2's mask decoder attends over all tokens of a prompt, so padding a short prompt with
not-a-point tokens to batch it with a longer one changes its mask. Prompts are therefore
decoded in one runtime call per distinct token count (every row of a call has the same
tokens it would have alone) and put back in request order: each prediction equals the
prediction of the same prompt sent alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from sam2serve.errors import BadRequest, PayloadTooLarge
from sam2serve.image.schema import Prediction, SegmentRequest
from sam2serve.media import postprocess
from sam2serve.runtime.base import LABEL_PAD, Decoded, Features, PromptBatch, Runtime
from sam2serve.wire import BinaryResult, RleMask


def click(
    runtime: Runtime,
    features: Features,
    batch: PromptBatch,
    request: SegmentRequest,
    mask_budget: int,
) -> tuple[list[Prediction] | BinaryResult, np.ndarray]:
    """One segment request's decode, on the click lane: the mask budget and mask_input
    checks, one decoder call per token count, the best mask per prompt, then the answer in
    the request's format. Returns it and the chosen low-res logits (N, m, m), clamped."""
    hw = features.orig_hw
    check_mask_budget(len(batch), hw, mask_budget)
    check_mask_input(batch, runtime.low_res_size)
    chosen, scores = decode_best(runtime, features, batch, request.multimask_output)
    low_res = clamped_low_res(chosen)
    if request.format == "binary":
        full = full_logits_stack(runtime, chosen, hw)
        return BinaryResult(postprocess.encode_npz(full, low_res)), low_res
    fmt, holes = request.format, request.polygon_holes
    predictions = [
        _prediction(logits > 0, float(score), fmt, holes)
        for logits, score in zip(full_logits(runtime, chosen, hw), scores, strict=True)
    ]
    return predictions, low_res


def token_groups(labels: np.ndarray) -> dict[int, np.ndarray]:
    """labels (N, K) -> {token count: row indices (ascending)}; a row's count is its number
    of non-padding tokens (0 for an empty prompt)."""
    counts = (np.asarray(labels) != LABEL_PAD).sum(axis=1)
    return {int(c): np.flatnonzero(counts == c) for c in np.unique(counts)}


def _rows(batch: PromptBatch, rows: np.ndarray, count: int) -> PromptBatch:
    """The given rows with exactly max(1, count) tokens each, real tokens first."""
    labels = batch.labels[rows]
    order = np.argsort(labels == LABEL_PAD, axis=1, kind="stable")[:, : max(1, count)]
    coords = np.take_along_axis(batch.coords[rows], order[..., None], axis=1)
    labels = np.take_along_axis(labels, order, axis=1)
    mask_input = None if batch.mask_input is None else batch.mask_input[rows]
    has_mask = None if batch.has_mask is None else batch.has_mask[rows]
    return PromptBatch(
        coords=np.ascontiguousarray(coords),
        labels=np.ascontiguousarray(labels),
        mask_input=mask_input,
        has_mask=has_mask,
    )


def decode_grouped(
    runtime: Runtime, features: Features, batch: PromptBatch, multimask: bool
) -> Decoded:
    """One `runtime.decode` per distinct token count; results in the batch's row order.

    Returns low_res (N, C, m, m) and scores (N, C), as `Runtime.decode`.
    """
    groups = token_groups(batch.labels)
    if len(groups) == 1:
        ((count, rows),) = groups.items()
        if batch.labels.shape[1] == max(1, count):
            return runtime.decode(features, batch, multimask)
    low_res: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    for count, rows in groups.items():
        part = runtime.decode(features, _rows(batch, rows, count), multimask)
        if low_res is None or scores is None:
            low_res = part.low_res.new_empty((len(batch), *part.low_res.shape[1:]))
            scores = part.scores.new_empty((len(batch), *part.scores.shape[1:]))
        index = torch.as_tensor(rows)
        low_res[index] = part.low_res
        scores[index] = part.scores
    assert low_res is not None and scores is not None
    return Decoded(low_res=low_res, scores=scores)


def decode_best(
    runtime: Runtime, features: Features, batch: PromptBatch, multimask: bool
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode (grouped), keep the best of C masks per prompt.

    Returns chosen (N, m, m) float32 low-res logits, unclamped, and scores (N,).
    """
    decoded = decode_grouped(runtime, features, batch, multimask)
    scores = decoded.scores.float().cpu().numpy()
    best = postprocess.select_best(scores)
    chosen = decoded.low_res[torch.arange(len(best)), torch.as_tensor(best)].float()
    return chosen, scores[np.arange(len(best)), best]


def clamped_low_res(chosen: torch.Tensor) -> np.ndarray:
    """(N, m, m) logits clamped to [-32, 32] as upstream does (mask_input / logits cache)."""
    return torch.clamp(chosen, -32.0, 32.0).cpu().numpy()


def full_logits(
    runtime: Runtime, chosen: torch.Tensor, orig_hw: tuple[int, int]
) -> Iterator[np.ndarray]:
    """Full-resolution (H, W) float32 logits, one prompt at a time (one H x W buffer alive
    at once, not an (N, H, W) stack)."""
    for i in range(chosen.shape[0]):
        yield runtime.upscale(chosen[i : i + 1], orig_hw)[0].float().cpu().numpy()


def full_logits_stack(
    runtime: Runtime, chosen: torch.Tensor, orig_hw: tuple[int, int]
) -> np.ndarray:
    """(N, H, W) float32 logits (format=binary returns them all), filled one prompt at a time."""
    h, w = orig_hw
    out = np.empty((chosen.shape[0], h, w), dtype=np.float32)
    for i, logits in enumerate(full_logits(runtime, chosen, orig_hw)):
        out[i] = logits
    return out


def check_mask_budget(n_prompts: int, orig_hw: tuple[int, int], budget: int) -> None:
    """Refuse (413) a request whose output masks exceed `budget` pixels x prompts, before any
    mask is computed. `budget` <= 0 turns the check off."""
    h, w = orig_hw
    pixels = h * w
    cost = pixels * max(1, n_prompts)
    if budget <= 0 or cost <= budget:
        return
    fits = max(0, budget // max(1, pixels))
    hint = (
        f"send at most {fits} prompts per request at this size (split the prompts over "
        "several requests on the same image_id)"
        if fits
        else "downscale the image"
    )
    raise PayloadTooLarge(
        f"{max(1, n_prompts)} prompts x {w}x{h} pixels = {cost:,} mask pixels is over this "
        f"server's per-request budget of {budget:,} (SAM2SERVE_MAX_MASK_PIXELS): {hint}, "
        "or raise SAM2SERVE_MAX_MASK_PIXELS",
        field="prompts",
    )


def check_mask_input(batch: PromptBatch, m: int) -> None:
    """400 unless the client's mask_input is (N, 1, m, m) for this model's low-res size."""
    if batch.mask_input is None or batch.has_mask is not None:
        return  # none, or the server's own saved logits
    if batch.mask_input.shape[-1] != m:
        side = batch.mask_input.shape[-1]
        raise BadRequest(
            f"mask_input masks are {side}x{side}; this model needs finite logits of shape "
            f"({len(batch)}, {m}, {m}): one {m}x{m} mask per prompt",
            field="mask_input",
        )


def _prediction(mask: np.ndarray, score: float, fmt: str, holes: bool) -> Prediction:
    if fmt == "rle":
        return Prediction(
            masks=RleMask(**postprocess.mask_to_rle(mask)), confidence=score, format="rle"
        )
    return Prediction(masks=postprocess.mask_to_polygons(mask, holes=holes), confidence=score)
