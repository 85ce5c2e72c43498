"""Pre-labelling with SAM 3: an image task without context -> every instance of the labeling
config's labels, as one Label Studio prediction.

Each label of the BrushLabels / PolygonLabels / RectangleLabels controls on the image becomes
a concept prompt: its phrase is `SAM2SERVE_LABEL_STUDIO_PHRASES[label]`, else the label
lower-cased. Labels sharing a phrase share its prompt. The prompts go to SAM 3 in requests of
at most `SAM2SERVE_SAM3_MAX_PROMPTS`; each instance found comes back once per control holding
its label: a brush mask (Label Studio's RLE), polygons, or its bounding box, in percentages.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sam2serve.label_studio.labeling_config import Control, LabelingConfig
from sam2serve.label_studio.results import mask_box_pct, mask_results, region_id
from sam2serve.media import postprocess
from sam2serve.sam3.schema import ConceptSegmentResponse

#: the control tags a pre-label answers (RectangleLabels with each instance's box)
PRELABEL_TAGS = frozenset({"brushlabels", "polygonlabels", "rectanglelabels"})


@dataclass(frozen=True)
class Phrase:
    """One concept prompt: its `text` and the labels (in config order) it stands for."""

    text: str
    labels: tuple[str, ...]


def prelabel_controls(config: LabelingConfig, image_name: str) -> list[Control]:
    """The controls on `image_name` a pre-label fills (those with at least one label)."""
    return [c for c in config.controls_for(image_name, PRELABEL_TAGS) if c.labels]


def phrases_for(controls: list[Control], mapping: Mapping[str, str]) -> list[Phrase]:
    """Every distinct label of `controls` -> its phrase (`mapping[label]`, else the label
    lower-cased); labels with the same phrase share one Phrase, in first-seen order."""
    by_text: dict[str, list[str]] = {}
    for control in controls:
        for label in control.labels:
            text = (mapping.get(label) or label).strip()
            text = text if label in mapping else text.lower()
            if text and label not in by_text.setdefault(text, []):
                by_text[text].append(label)
    return [Phrase(text, tuple(labels)) for text, labels in by_text.items()]


def chunks(phrases: list[Phrase], size: int) -> list[list[Phrase]]:
    """`phrases` in requests of at most `size` prompts."""
    return [phrases[i : i + size] for i in range(0, len(phrases), size)]


@dataclass
class Prelabel:
    """The instances found so far: Label Studio result items, their scores, and notes."""

    result: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self, phrases: list[Phrase], response: ConceptSegmentResponse, controls: list[Control]
    ) -> None:
        """One concept_segment answer (one prompt per phrase, RLE masks) as result items."""
        for phrase, found in zip(phrases, response.prompt_results, strict=True):
            if found.note:
                self.notes.append(f"{phrase.text!r}: {found.note}")
            for prediction in found.predictions:
                mask = postprocess.rle_to_mask(prediction.masks.model_dump())  # type: ignore[union-attr]
                self.scores.append(prediction.confidence)
                for control in controls:
                    for label in phrase.labels:
                        if label in control.labels:
                            self.result += instance_items(
                                mask, prediction.confidence, control, label
                            )

    def score(self) -> float:
        """The prediction's overall score: the mean of its instances' (0 with none)."""
        return sum(self.scores) / len(self.scores) if self.scores else 0.0


def instance_items(mask: Any, score: float, control: Control, label: str) -> list[dict[str, Any]]:
    """One instance's (H, W) mask as `control`'s result items, labelled `label`."""
    if control.kind != "rectanglelabels":
        return mask_results(mask, score, control, label)
    box = mask_box_pct(mask)
    if box is None:
        return []
    height, width = mask.shape
    return [
        {
            "id": region_id(),
            "from_name": control.name,
            "to_name": control.to_name,
            "type": "rectanglelabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "score": float(score),
            "readonly": False,
            "value": {**box, "rotation": 0, "rectanglelabels": [label]},
        }
    ]


async def run_prelabel(
    phrases: list[Phrase],
    controls: list[Control],
    max_prompts: int,
    segment: Callable[[list[str]], Awaitable[ConceptSegmentResponse]],
    deadline: float,
) -> Prelabel:
    """Every phrase through `segment` (a concept_segment call on the task's image, RLE masks,
    one text prompt per phrase), at most `max_prompts` per call; no further call once
    `deadline` (monotonic seconds) has passed (the note names the phrases left)."""
    found = Prelabel()
    parts = chunks(phrases, max_prompts)
    for i, part in enumerate(parts):
        if i and time.monotonic() >= deadline:
            left = ", ".join(repr(p.text) for rest in parts[i:] for p in rest)
            found.notes.append(
                f"not searched for {left}: the call's time budget "
                "(SAM2SERVE_LABEL_STUDIO_BUDGET_S) was spent; ask again"
            )
            break
        found.add(part, await segment([p.text for p in part]), controls)
    return found
