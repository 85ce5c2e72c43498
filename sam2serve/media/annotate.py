"""Draw masks and prompts on an image: the annotated PNG of the CLI and the SDK.

OpenCV only (supervision is not needed; `SegmentResult.to_detections()` gives supervision's
annotators to whoever wants them). Each prediction i gets colour ``PALETTE[i % len]``: a
translucent overlay, a solid outline (holes too), and its prompt drawn over it: the box as a
rectangle in the same colour, points as discs (green = positive, red = negative) with a white
ring.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["PALETTE", "annotate"]

#: RGB colours, one per prediction (cycled).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (30, 144, 255),
    (255, 99, 71),
    (50, 205, 50),
    (255, 215, 0),
    (186, 85, 211),
    (0, 206, 209),
    (255, 140, 0),
    (255, 105, 180),
)
POSITIVE = (0, 200, 0)
NEGATIVE = (230, 0, 0)
RING = (255, 255, 255)


def annotate(
    image: np.ndarray,
    masks: np.ndarray | Sequence[np.ndarray],
    prompts: Sequence[dict[str, Any]] | None = None,
    *,
    alpha: float = 0.45,
) -> np.ndarray:
    """Overlay masks (and the prompts that made them) on an image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (BGR works too: colours are then swapped).
        masks: ``(N, H, W)`` bool, one per prediction.
        prompts: the API prompts (CENTER boxes ``{"x","y","width","height"}``, points
            ``{"x","y","positive"}``); prompt i is drawn in mask i's colour.
        alpha: overlay opacity in [0, 1].

    Returns:
        A new ``(H, W, 3)`` uint8 array, same size as `image`.
    """
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    mask_list = [np.asarray(m, dtype=bool) for m in masks]
    for m in mask_list:
        if m.shape != (h, w):
            raise ValueError(f"mask of shape {m.shape} does not match the image ({h}, {w})")
    out = rgb.astype(np.float32)
    for i, m in enumerate(mask_list):
        color = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        out[m] = out[m] * (1.0 - alpha) + color * alpha
    canvas = np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    thickness = max(1, round(min(h, w) / 300))
    for i, m in enumerate(mask_list):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, PALETTE[i % len(PALETTE)], thickness, cv2.LINE_AA)
    for i, p in enumerate(prompts or []):
        _draw_prompt(canvas, p, PALETTE[i % len(PALETTE)], thickness)
    return canvas


def _draw_prompt(
    canvas: np.ndarray, prompt: dict[str, Any], color: tuple[int, int, int], thickness: int
) -> None:
    h, w = canvas.shape[:2]
    box = prompt.get("box")
    if box:
        x1 = round(box["x"] - box["width"] / 2)
        y1 = round(box["y"] - box["height"] / 2)
        x2 = round(box["x"] + box["width"] / 2)
        y2 = round(box["y"] + box["height"] / 2)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness + 1, cv2.LINE_AA)
    radius = max(3, round(min(h, w) / 100))
    for pt in prompt.get("points") or []:
        center = (round(pt["x"]), round(pt["y"]))
        fill = POSITIVE if pt.get("positive", True) else NEGATIVE
        cv2.circle(canvas, center, radius + max(1, thickness), RING, -1, cv2.LINE_AA)
        cv2.circle(canvas, center, radius, fill, -1, cv2.LINE_AA)
