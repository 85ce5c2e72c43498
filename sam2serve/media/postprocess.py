"""Post-processing of decoder outputs: best-mask selection, polygons, COCO RLE and npz.

Pure numpy / OpenCV / pycocotools; no torch. Every function takes and returns plain arrays
(or JSON-ready python values), so the same code serves the HTTP routes, the CLI and the SDK.

Conventions:
- A *mask* is a 2-D ``bool`` array of shape ``(H, W)`` in original-image pixels.
- *Logits* are float arrays where ``> 0`` means "inside" (as in the binary format's npz).
- A *polygon* is a list of ``[x, y]`` python-int points (x = column, y = row), each inside
  ``[0, W-1] x [0, H-1]``.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as coco_mask

__all__ = [
    "encode_npz",
    "logits_to_mask",
    "mask_to_polygons",
    "mask_to_rle",
    "polygons_to_mask",
    "rle_to_mask",
    "select_best",
]

Polygon = list[list[int]]


def select_best(scores: np.ndarray) -> np.ndarray:
    """Index of the highest-scoring candidate mask for each prompt.

    Args:
        scores: ``(N, C)`` float, one row per prompt, one column per candidate mask
            (C = 3 with ``multimask_output``, else 1).

    Returns:
        ``(N,)`` int64 column indices.

    Ties are broken exactly as the Roboflow's server does: it takes ``np.argsort(row)[-1]``
    for each row, so we do literally that (default kind, one 1-D row at a time) rather than
    ``argmax`` (which returns the FIRST of tied maxima). For C <= 3 (all SAM2 produces) that
    is the LAST of the tied maxima; for larger C, numpy's SIMD argsort may order ties
    differently, and we follow it whatever it does. NaN sorts last and so "wins", as in
    Roboflow's server.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must have shape (N, C) with C >= 1, got {scores.shape}")
    return np.array([np.argsort(row)[-1] for row in scores], dtype=np.int64)


def logits_to_mask(logits: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Binarise logits: ``logits > threshold`` (``> 0`` means inside).

    Args:
        logits: float array of any shape, e.g. ``(H, W)`` or ``(N, H, W)``.
        threshold: logit threshold; 0.0 is SAM2's own ``mask_threshold``.

    Returns:
        ``bool`` array of the same shape.
    """
    return np.asarray(logits) > threshold


def _as_uint8_mask(mask: np.ndarray) -> np.ndarray:
    """Validate a ``(H, W)`` bool/integer mask and return it as contiguous 0/1 uint8."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise TypeError(
            f"mask must be bool (or 0/1 integers), got {mask.dtype}; "
            "threshold logits with logits_to_mask() first"
        )
    return np.ascontiguousarray(mask != 0, dtype=np.uint8)


def mask_to_polygons(mask: np.ndarray, *, holes: bool = False) -> list[Polygon]:
    """Trace a mask's boundaries as integer pixel polygons.

    Args:
        mask: ``(H, W)`` bool.
        holes: ``False`` (default, what Roboflow's server returns): one polygon per
            8-connected part, its outer boundary only
            (``cv2.RETR_EXTERNAL`` + ``cv2.CHAIN_APPROX_SIMPLE``), in OpenCV's order; filling
            them gives the mask with its holes filled in. ``True``: ``cv2.RETR_CCOMP``, i.e.
            hole boundaries too, ordered as each outer boundary immediately followed by the
            boundaries of its own holes (outers in OpenCV's order, an island inside a hole
            being an outer of its own).

    Returns:
        A list of polygons, each ``[[x, y], ...]`` of python ints in
        ``[0, W-1] x [0, H-1]``; ``[]`` for an empty mask. Degenerate polygons are kept: a
        single pixel gives 1 point, a 1-px-wide straight line gives 2 points; a client
        fills them as a point / a line.

    Reconstruction (exact, both modes; see :func:`polygons_to_mask`): pass ALL polygons
    in ONE call to ``cv2.fillPoly(canvas, [np.int32(p) for p in polys], 1)``. OpenCV fills
    a set of polygons with the even-odd rule and includes the boundary pixels, and a hole
    boundary runs along the mask pixels that surround the hole, so the hole's inside is
    cleared while its rim stays set. Holes are also recognisable by orientation: in image
    coordinates (y down) the shoelace signed area of an outer boundary is <= 0 (0 for
    1-px-thin parts and degenerate polygons) and that of a hole is > 0.
    """
    m = _as_uint8_mask(mask)
    if m.size == 0 or not m.any():
        return []
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, hierarchy = cv2.findContours(m, mode, cv2.CHAIN_APPROX_SIMPLE)
    if not holes:
        order = list(range(len(contours)))
    else:
        # hierarchy[0][i] = [next, previous, first_child, parent]; CCOMP has two levels.
        parents = hierarchy[0][:, 3]
        children: dict[int, list[int]] = {}
        for i, parent in enumerate(parents):
            if parent >= 0:
                children.setdefault(int(parent), []).append(i)
        order = []
        for i, parent in enumerate(parents):
            if parent < 0:
                order.append(i)
                order.extend(children.get(i, []))
    return [contours[i].reshape(-1, 2).tolist() for i in order]


def polygons_to_mask(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """Rasterise polygons from :func:`mask_to_polygons` back to a mask (client recipe).

    Args:
        polygons: list of ``[[x, y], ...]`` integer polygons.
        height, width: output size in pixels.

    Returns:
        ``(height, width)`` bool. For ``holes=True`` output this equals the original mask
        exactly; for the default output it is the mask with its holes filled in.
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    pts = [np.asarray(p, dtype=np.int32).reshape(-1, 2) for p in polygons if len(p)]
    if pts:
        cv2.fillPoly(canvas, pts, 1)
    return canvas.astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a mask as COCO compressed RLE (exact, holes included).

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``{"size": [H, W], "counts": str}`` — pycocotools-compatible (column-major runs).
    """
    m = _as_uint8_mask(mask)
    rle = coco_mask.encode(np.asfortranarray(m))
    h, w = (int(v) for v in rle["size"])
    return {"size": [h, w], "counts": rle["counts"].decode("utf-8")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO compressed RLE to a mask.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes}``.

    Returns:
        ``(H, W)`` bool.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError('rle must be {"size": [h, w], "counts": str | bytes}') from exc
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    if not isinstance(counts, bytes):
        raise TypeError(f"rle counts must be str or bytes, got {type(counts).__name__}")
    return coco_mask.decode({"size": [h, w], "counts": counts}).astype(bool)


def _float32_stack(name: str, arr: np.ndarray) -> np.ndarray:
    """Check ``arr`` is a numeric ``(N, H, W)`` array and return it as float32."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def encode_npz(masks: np.ndarray, low_res_masks: np.ndarray) -> bytes:
    """Serialise logits as the ``format="binary"`` body: a compressed ``.npz``.

    Args:
        masks: ``(N, H, W)`` full-resolution logits (``> 0`` = inside).
        low_res_masks: ``(N, h, w)`` low-resolution logits (256 x 256 for SAM2), usable as
            the next request's ``mask_input``.

    Returns:
        Bytes of an ``.npz`` with exactly the keys ``masks`` and ``low_res_masks``, both
        float32, never object arrays: ``np.load(BytesIO(b), allow_pickle=False)`` reads it.
    """
    full = _float32_stack("masks", masks)
    low = _float32_stack("low_res_masks", low_res_masks)
    if full.shape[0] != low.shape[0]:
        raise ValueError(
            f"masks and low_res_masks must hold the same number of predictions, "
            f"got {full.shape[0]} and {low.shape[0]}"
        )
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=full, low_res_masks=low)
    return buf.getvalue()
