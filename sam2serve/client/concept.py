"""SAM 3 concept segmentation for the SDK: request body and typed result, shared by the HTTP
clients and the in-process Segmenter.

    result = client.concept_segment("street.jpg", texts=["car", "person"], threshold=0.4)
    detections = result.to_detections()      # class names "car" / "person"

The SDK always asks for ``format=rle`` (exact masks that carry their size). Boxes given to
``boxes=`` are CORNER boxes ``(x1, y1, x2, y2)`` in pixels, as everywhere in the SDK; they
are exemplars: every instance that looks like them is returned (``box_labels``: 1 = like
this, 0 = not like this; default all 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2serve.client.image_encode import ImageLike
from sam2serve.client.mask_calls import MasksCall, paint_masks, rle_fields, with_image
from sam2serve.client.results import MaskPrediction, SegmentResult

if TYPE_CHECKING:
    import supervision

CONCEPT_PATH = "/sam3/concept_segment"
SAM3_EMBED_PATH = "/sam3/embed_image"


@dataclass(eq=False)
class ConceptPrediction(MaskPrediction):
    """One instance of a concept: `prompt_index` of the prompt that found it and its
    `phrase` (None for a prompt of boxes only); `confidence` is SAM 3's score."""

    prompt_index: int = 0
    phrase: str | None = None


@dataclass(eq=False)
class ConceptResult(SegmentResult):
    """Every instance found, prompt by prompt (best first within a prompt).

    phrases: each prompt's phrase (None: boxes only); found: instances over the threshold
    per prompt; notes: why a prompt answered fewer than it found (None: all of them)."""

    phrases: list[str | None] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    notes: list[str | None] = field(default_factory=list)

    def of_prompt(self, index: int) -> list[ConceptPrediction]:
        """The instances prompt `index` found."""
        return [p for p in self.predictions if getattr(p, "prompt_index", -1) == index]

    @property
    def class_names(self) -> list[str]:
        """Each prompt's name for detections: its phrase, or "exemplar <i>" for boxes only."""
        return [p if p is not None else f"exemplar {i}" for i, p in enumerate(self.phrases)]

    def to_detections(self) -> supervision.Detections:
        """A `supervision.Detections`: masks (N, H, W) bool, xyxy boxes from the masks,
        confidence, ``class_id`` = prompt index and ``data["class_name"]`` = its phrase (so
        `sv.LabelAnnotator` writes "car 0.87")."""
        ids = np.array([getattr(p, "prompt_index", 0) for p in self.predictions], dtype=int)
        names = self.class_names
        return self._detections(
            ids, {"class_name": np.array([names[i] for i in ids], dtype=object)}
        )

    def annotate(self, image: ImageLike | None = None, *, bgr: bool = False) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: each instance filled in its prompt's colour with a white
        outline and its phrase and score written at its box's corner."""
        import cv2

        preds = list(self.predictions)
        colours = [getattr(p, "prompt_index", 0) for p in preds]
        drawn = paint_masks(self.source_rgb(image, bgr=bgr), self.masks, colours)
        names = self.class_names
        for p, index in zip(preds, colours, strict=True):
            box = p.box_xyxy
            if box is not None:
                label = f"{names[index] if index < len(names) else index} {p.confidence:.2f}"
                origin = (box[0], max(10, box[1] - 3))
                cv2.putText(drawn, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3)
                cv2.putText(drawn, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        return drawn


def concept_prompts(
    text: str | None = None,
    texts: Sequence[str] | None = None,
    boxes: Any = None,
    box_labels: Sequence[int | bool] | None = None,
    prompts: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The API's prompts: one per phrase (`text`, or each of `texts`); exemplar `boxes`
    (corner boxes, (N, 4)) join the phrase when there is one, else form a prompt of their
    own. `prompts`: Roboflow prompt dicts, sent as they are after those. ValueError when
    nothing is asked or the arguments contradict each other."""
    phrases = ([text] if text is not None else []) + list(texts or [])
    if text is not None and texts:
        raise ValueError("give `text` (one phrase) or `texts` (several), not both")
    rows = np.asarray(boxes if boxes is not None else [], dtype=np.float64).reshape(-1, 4)
    if box_labels is not None and len(box_labels) != len(rows):
        raise ValueError(f"box_labels has {len(box_labels)} labels for {len(rows)} boxes")
    out: list[dict[str, Any]] = [{"type": "text", "text": str(p)} for p in phrases]
    if len(rows):
        if len(phrases) > 1:
            raise ValueError(
                "exemplar boxes go with one phrase (text=...) or alone; for several "
                "combinations pass prompts=[...]"
            )
        exemplar: dict[str, Any] = out.pop() if out else {}
        exemplar.update(
            type="visual",
            boxes=[{"x0": x0, "y0": y0, "x1": x1, "y1": y1} for x0, y0, x1, y1 in rows.tolist()],
            box_labels=[int(bool(v)) for v in (box_labels or [1] * len(rows))],
        )
        out.append(exemplar)
    out += [dict(p) for p in prompts or []]
    if not out:
        raise ValueError("give text=..., texts=[...], boxes=... (exemplars) or prompts=[...]")
    return out


class ConceptCall(MasksCall):
    """A concept_segment request and its answer's parser."""

    def parse(self, answer: dict[str, Any]) -> ConceptResult:
        preds: list[MaskPrediction] = []
        phrases: list[str | None] = []
        found: list[int] = []
        notes: list[str | None] = []
        for result in answer.get("prompt_results", []):
            index = int(result["prompt_index"])
            echo = result.get("echo") or {}
            phrase = echo.get("text")
            phrases.append(phrase)
            found.append(int(result.get("found", len(result.get("predictions", [])))))
            notes.append(result.get("note"))
            preds += [
                ConceptPrediction(**rle_fields(p), prompt_index=index, phrase=phrase)
                for p in result.get("predictions", [])
            ]
        return self.result(ConceptResult, preds, answer, phrases=phrases, found=found, notes=notes)


def concept_body(
    image_id: str | None,
    model: str | None,
    prompts: list[dict[str, Any]],
    threshold: float | None,
    nms_iou_threshold: float | None,
) -> dict[str, Any]:
    """The request body without its image (`threshold`: every prompt's without its own;
    None: the server's default, 0.5)."""
    body: dict[str, Any] = {"prompts": prompts, "format": "rle"}
    if threshold is not None:
        body["output_prob_thresh"] = float(threshold)
    if nms_iou_threshold is not None:
        body["nms_iou_threshold"] = float(nms_iou_threshold)
    if image_id is not None:
        body["image_id"] = image_id
    if model is not None:
        body["model_id"] = model
    return body


def concept_call(
    image: ImageLike | None,
    image_id: str | None,
    model: str | None,
    bgr: bool,
    prompts: list[dict[str, Any]],
    threshold: float | None,
    nms_iou_threshold: float | None,
) -> ConceptCall:
    """A concept_segment request (the image encoded here, if given)."""
    body = concept_body(image_id, model, prompts, threshold, nms_iou_threshold)
    return ConceptCall(CONCEPT_PATH, with_image(body, image, image_id, bgr), image, bgr)
