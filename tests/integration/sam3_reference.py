"""Meta's SAM 3 reference (`Sam3Processor`, `Sam3Image.predict_inst`) driven the way its
README does, on a separately loaded copy of the same checkpoint, and the comparisons the
SAM 3 fidelity tests share (tiny config in the default run, the real one in the slow pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2serve.registry import ModelSpec
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_runtime import (
    Sam3Features,
    Sam3Runtime,
    boxes_to_prompt,
    load_model,
)

CPU = torch.device("cpu")


@dataclass
class Prompt:
    """One concept prompt: text and/or exemplar boxes (absolute XYXY pixels, labels)."""

    text: str | None
    boxes: np.ndarray
    labels: np.ndarray


class Reference:
    """`Sam3Processor` on its own model instance, capturing `forward_grounding`'s raw
    outputs (pre-threshold logits, boxes, masks, presence) of the last call."""

    def __init__(self, spec: ModelSpec, checkpoint: Path, model: torch.nn.Module | None = None):
        from sam3.model.sam3_image_processor import Sam3Processor

        self.model = model if model is not None else load_model(spec, checkpoint, CPU)
        size = int(self.model.inst_interactive_predictor.model.image_size)
        with on_device(CPU):
            self.processor = Sam3Processor(self.model, resolution=size, device="cpu")
        self.raw: dict[str, torch.Tensor] = {}
        original = self.model.forward_grounding

        def capture(*args: Any, **kwargs: Any) -> dict:
            out = original(*args, **kwargs)
            self.raw = {k: out[k] for k in ("pred_logits", "pred_boxes", "pred_masks")}
            self.raw["presence_logit_dec"] = out["presence_logit_dec"]
            return out

        self.model.forward_grounding = capture  # this instance only (the reference's own)

    def set_image(self, rgb: np.ndarray) -> dict:
        with on_device(CPU):
            return self.processor.set_image(Image.fromarray(rgb))

    def run(self, state: dict, prompt: Prompt, threshold: float) -> dict:
        """The prompt as a README user would send it: the phrase, then each box in order."""
        self.processor.reset_all_prompts(state)
        self.processor.confidence_threshold = threshold
        h, w = state["original_height"], state["original_width"]
        with on_device(CPU):
            if prompt.text is not None:
                state = self.processor.set_text_prompt(prompt.text, state)
            for box, label in zip(
                boxes_to_prompt(prompt.boxes, (h, w)), prompt.labels.tolist(), strict=True
            ):
                state = self.processor.add_geometric_prompt(box, bool(label), state)
        return state

    def predict_inst(self, state: dict, **kwargs: Any) -> tuple[np.ndarray, ...]:
        with on_device(CPU):
            return self.model.predict_inst(state, **kwargs)


def assert_concept_equal(
    runtime: Sam3Runtime, features: Sam3Features, ref: Reference, state: dict, prompt: Prompt
) -> None:
    """Pre-threshold outputs equal Meta's; then, at a threshold inside the score band (some
    but not all queries pass), the kept scores, boxes and full-size masks equal Meta's."""
    text = runtime.encode_text([prompt.text])[0] if prompt.text is not None else None
    out = runtime.concept(features, text, prompt.boxes, prompt.labels)

    ref.run(state, prompt, threshold=-1.0)  # keep every query: compare all of them
    raw = ref.raw
    torch.testing.assert_close(out.mask_logits, raw["pred_masks"][0], rtol=0, atol=0)
    np.testing.assert_array_equal(out.logits, raw["pred_logits"][0, :, 0].numpy())
    presence = float(raw["presence_logit_dec"].sigmoid().reshape(-1)[0])
    assert out.presence == presence
    np.testing.assert_array_equal(out.scores, state["scores"].numpy())
    np.testing.assert_array_equal(out.boxes_xyxy, state["boxes"].numpy())
    assert np.isfinite(out.scores).all() and np.isfinite(out.boxes_xyxy).all()

    # a threshold inside the band: some, not all, instances pass (no vacuous equality)
    threshold = float(np.quantile(out.scores, 0.9))
    keep = np.flatnonzero(out.scores > threshold)
    assert 0 < len(keep) < len(out.scores), (threshold, out.scores.min(), out.scores.max())
    state = ref.run(state, prompt, threshold=threshold)
    np.testing.assert_array_equal(out.scores[keep], state["scores"].numpy())
    np.testing.assert_array_equal(out.boxes_xyxy[keep], state["boxes"].numpy())
    masks = runtime.masks(features, out, keep)
    expected = state["masks"][:, 0].numpy()
    assert masks.shape == expected.shape
    assert 0 < masks.sum() < masks.size  # masks are neither empty nor full
    np.testing.assert_array_equal(masks, expected)
