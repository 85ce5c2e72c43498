"""Fidelity of a runtime vs Meta's SAM2ImagePredictor: final-mask IoU on seeded prompts.

20 prompts per photo (single points, point pairs with a negative, boxes, box + point, three
points), each decoded on its own with multimask output and the best-scoring mask kept, as
the Roboflow's server does. Shared by bench/run.py and the fidelity tests.
"""

from __future__ import annotations

import numpy as np
import torch

from sam2serve.runtime.base import PromptBatch, Runtime

Prompt = tuple[np.ndarray, np.ndarray]  # coords (K, 2) pixels, labels (K,) SAM2 labels


def seeded_prompts(h: int, w: int, seed: int, count: int = 20) -> list[Prompt]:
    rng = np.random.default_rng(seed)

    def pt() -> list[float]:
        return [float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.1, 0.9) * h)]

    out: list[Prompt] = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            coords, labels = [pt()], [1]
        elif kind == 1:
            coords, labels = [pt(), pt()], [1, 0]
        elif kind in (2, 3):
            cx, cy = pt()
            bw, bh = rng.uniform(0.15, 0.5) * w, rng.uniform(0.15, 0.5) * h
            coords = [[cx - bw / 2, cy - bh / 2], [cx + bw / 2, cy + bh / 2]]
            labels = [2, 3]
            if kind == 3:
                coords.append([cx, cy])
                labels.append(1)
        else:
            coords, labels = [pt(), pt(), pt()], [1, 1, 0]
        out.append((np.array(coords, np.float32), np.array(labels, np.int32)))
    return out


def reference_masks(predictor: object, rgb: np.ndarray, prompts: list[Prompt]) -> list[np.ndarray]:
    """Best-of-3 masks from SAM2ImagePredictor (boxes as its `box` argument)."""
    predictor.set_image(rgb)  # type: ignore[attr-defined]
    masks = []
    for coords, labels in prompts:
        is_box = labels[:2].tolist() == [2, 3]
        box = coords[:2].reshape(-1) if is_box else None
        pts, lbl = (coords[2:], labels[2:]) if is_box else (coords, labels)
        out, scores, _ = predictor.predict(  # type: ignore[attr-defined]
            point_coords=pts if len(pts) else None,
            point_labels=lbl if len(lbl) else None,
            box=box,
            multimask_output=True,
        )
        masks.append(out[int(np.argmax(scores))] > 0)
    return masks


def runtime_masks(runtime: Runtime, rgb: np.ndarray, prompts: list[Prompt]) -> list[np.ndarray]:
    features = runtime.embed(rgb)
    h, w = rgb.shape[:2]
    masks = []
    for coords, labels in prompts:
        decoded = runtime.decode(features, PromptBatch(coords[None], labels[None]), True)
        best = int(torch.argmax(decoded.scores[0]))
        masks.append(runtime.upscale(decoded.low_res[:, best], (h, w))[0].numpy() > 0)
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    return [iou(a, b) for a, b in zip(reference, candidate, strict=True)]
