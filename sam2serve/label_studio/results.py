"""sam2serve masks and tracks -> Label Studio result items (percentages, brush RLE)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from sam2serve.label_studio import brush
from sam2serve.label_studio.labeling_config import Control
from sam2serve.media import postprocess


def region_id() -> str:
    return "sam2serve-" + uuid.uuid4().hex[:10]


def pick_label(control: Control, wanted: str | None) -> str | None:
    """The annotator's label when `control` has it, else the control's first label."""
    if wanted is not None and (wanted in control.labels or not control.labels):
        return wanted
    return control.labels[0] if control.labels else None


def _labels_key(control: Control) -> str:
    return control.kind if control.kind.endswith("labels") else control.kind + "labels"


def mask_results(
    mask: np.ndarray, score: float, control: Control, label: str | None
) -> list[dict[str, Any]]:
    """One (H, W) bool mask as `control`'s result items: a BrushLabels region (Label
    Studio's RLE, the whole mask), or PolygonLabels regions (one per outer boundary of at
    least 3 points, points in % of the image)."""
    height, width = mask.shape
    chosen = pick_label(control, label)
    base = {
        "from_name": control.name,
        "to_name": control.to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": float(score),
        "readonly": False,
    }
    if control.kind == "brushlabels":
        value: dict[str, Any] = {"format": "rle", "rle": brush.mask_to_rle(mask)}
        if chosen is not None:
            value["brushlabels"] = [chosen]
        return [{**base, "id": region_id(), "type": "brushlabels", "value": value}]
    out = []
    for polygon in postprocess.mask_to_polygons(mask):
        if len(polygon) < 3:
            continue
        points = [[x * 100 / width, y * 100 / height] for x, y in polygon]
        value = {"points": points, "closed": True}
        if chosen is not None:
            value[_labels_key(control)] = [chosen]
        out.append({**base, "id": region_id(), "type": control.kind, "value": value})
    return out


def mask_box_pct(mask: np.ndarray) -> dict[str, float] | None:
    """The bounding box of a (H, W) bool mask in % ({x, y, width, height}, x/y the
    top-left corner, pixel edges: a mask of columns 10..19 spans x 10 .. 20), or None if
    empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    return {
        "x": x0 * 100 / width,
        "y": y0 * 100 / height,
        "width": (x1 - x0) * 100 / width,
        "height": (y1 - y0) * 100 / height,
    }
