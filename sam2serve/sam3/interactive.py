"""SAM 3's instance-interactive predictor behind SAM 2's click and segment-everything code:
its view of the features, and a decode that takes saved logits for some prompts only."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sam2serve.errors import NotInCache
from sam2serve.image.decoding import click
from sam2serve.image.schema import Prediction, SegmentRequest
from sam2serve.runtime.base import Decoded, Features, PromptBatch
from sam2serve.runtime.sam3_types import Sam3Features
from sam2serve.wire import BinaryResult


def inst_view(runtime: Any, features: Any) -> Features:
    """SAM 3 features -> its instance predictor's view; an id bound to other features is
    never answered with them."""
    if not isinstance(features, Sam3Features):
        raise NotInCache(
            "this image_id is not a SAM 3 embedding: send the image (SAM 2 and SAM 3 "
            "embeddings are kept apart)",
            field="image_id",
        )
    return runtime.inst_view(features)


def click_inst(
    runtime: Any,
    features: Sam3Features,
    batch: PromptBatch,
    request: SegmentRequest,
    budget: int,
) -> tuple[list[Prediction] | BinaryResult, np.ndarray]:
    """SAM 2's click decode (`image.decoding.click`) on SAM 3's instance predictor."""
    return click(MaskRows(runtime), inst_view(runtime, features), batch, request, budget)


class MaskRows:
    """`runtime` whose `decode` also takes a batch where only some prompts have saved
    logits (`has_mask`): those rows and the others decode apart (every row's answer is
    its own: the decoder repeats the image per prompt), merged back in order."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.model_id = runtime.model_id
        self.device = runtime.device

    @property
    def low_res_size(self) -> int:
        return int(self.runtime.low_res_size)

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        return self.runtime.upscale(low_res, orig_hw)

    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        has = prompts.has_mask
        if prompts.mask_input is None or has is None or bool(np.all(has)):
            return self.runtime.decode(features, prompts, multimask)
        if not np.any(has):
            bare = PromptBatch(prompts.coords, prompts.labels)
            return self.runtime.decode(features, bare, multimask)
        with_mask = np.flatnonzero(has)
        without = np.flatnonzero(~np.asarray(has, dtype=bool))
        parts = [
            (with_mask, PromptBatch(
                prompts.coords[with_mask], prompts.labels[with_mask],
                prompts.mask_input[with_mask],
            )),
            (without, PromptBatch(prompts.coords[without], prompts.labels[without])),
        ]  # fmt: skip
        low_res: torch.Tensor | None = None
        scores: torch.Tensor | None = None
        for rows, part in parts:
            got = self.runtime.decode(features, part, multimask)
            if low_res is None or scores is None:
                n = len(prompts)
                low_res = got.low_res.new_empty((n, *got.low_res.shape[1:]))
                scores = got.scores.new_empty((n, *got.scores.shape[1:]))
            index = torch.as_tensor(rows)
            low_res[index] = got.low_res
            scores[index] = got.scores
        assert low_res is not None and scores is not None
        return Decoded(low_res=low_res, scores=scores)
