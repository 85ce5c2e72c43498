"""Prompt conveniences: (x, y[, positive]) points and CORNER ``xyxy`` boxes -> API prompts.

The API's box is CENTER-based: ``{"x": cx, "y": cy, "width": w, "height": h}``. Every box the
SDK and CLI accept is a corner box ``(x1, y1, x2, y2)`` (top-left, bottom-right; what OpenCV,
supervision and most tools give) and is converted here:

    x = (x1 + x2) / 2,  y = (y1 + y2) / 2,  width = x2 - x1,  height = y2 - y1

How `points` and `boxes` become prompts (one prediction per prompt):
- all points, plus the FIRST box, form ONE prompt (several clicks refine one object);
- every further box is a prompt of its own (one mask per extra box);
- full control: `prompts=` takes the API's own prompt JSON, or `prompt(...)` results; they come
  first, the convenience prompt(s) after.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "box_xyxy_to_center",
    "build_prompts",
    "parse_box",
    "parse_point",
    "point",
    "prompt",
]

Number = float | int
PointLike = Sequence[Any]  # (x, y) or (x, y, positive)
BoxLike = Sequence[Number]  # (x1, y1, x2, y2)

_NEGATIVE = frozenset({"neg", "negative", "n", "0", "false", "-"})
_POSITIVE = frozenset({"pos", "positive", "p", "1", "true", "+"})


def point(x: Number, y: Number, positive: bool = True) -> dict[str, Any]:
    """One API point ``{"x", "y", "positive"}`` in original-image pixels."""
    return {"x": _coord("point", x), "y": _coord("point", y), "positive": bool(positive)}


def box_xyxy_to_center(x1: Number, y1: Number, x2: Number, y2: Number) -> dict[str, float]:
    """Corner box (top-left x1, y1; bottom-right x2, y2) -> the API's CENTER box."""
    x1, y1, x2, y2 = (_coord("box", v) for v in (x1, y1, x2, y2))
    if x2 < x1 or y2 < y1:
        raise ValueError(
            f"box {(x1, y1, x2, y2)} is not a corner box: need x1 <= x2 and y1 <= y2 "
            "(boxes here are (x1, y1, x2, y2); for the API's center form use prompts=)"
        )
    return {"x": (x1 + x2) / 2, "y": (y1 + y2) / 2, "width": x2 - x1, "height": y2 - y1}


def prompt(points: Sequence[PointLike] | None = None, box: BoxLike | None = None) -> dict:
    """One API prompt from points ``(x, y)`` / ``(x, y, positive)`` and a CORNER box."""
    out: dict[str, Any] = {}
    if box is not None:
        out["box"] = box_xyxy_to_center(*_box_tuple(box))
    point_list = _as_point_list(points) if points is not None else []
    if point_list:
        out["points"] = [_point_dict(p) for p in point_list]
    return out


def build_prompts(
    prompts: Any = None,
    points: Sequence[PointLike] | PointLike | None = None,
    boxes: Sequence[BoxLike] | BoxLike | None = None,
) -> list[dict[str, Any]] | None:
    """The request's prompt list (see module docstring), or None when nothing was given.

    Args:
        prompts: API prompt JSON: ``{"prompts": [...]}``, a list of prompts, or one prompt
            (dicts, or pydantic models with the API's fields).
        points: one ``(x, y[, positive])`` or a list of them; all go into ONE prompt.
        boxes: one corner box ``(x1, y1, x2, y2)`` or a list of them.
    """
    out = _api_prompts(prompts)
    point_list = _as_point_list(points) if points is not None else []
    box_list = _as_box_list(boxes) if boxes is not None else []
    if point_list or box_list:
        out.append(prompt(point_list or None, box_list[0] if box_list else None))
        out.extend(prompt(box=b) for b in box_list[1:])
    return out or None


# -- CLI strings ---------------------------------------------------------------------


def parse_point(text: str) -> tuple[float, float, bool]:
    """``"X,Y"`` or ``"X,Y,neg"`` (also ``pos``, ``1``/``0``, ``true``/``false``)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise ValueError(f"--point {text!r}: expected X,Y or X,Y,neg (e.g. 320,240 or 10,10,neg)")
    x, y = (_number(p, f"--point {text!r}") for p in parts[:2])
    positive = True
    if len(parts) == 3:
        flag = parts[2].lower()
        if flag not in _NEGATIVE | _POSITIVE:
            raise ValueError(f"--point {text!r}: the third field must be 'neg' or 'pos'")
        positive = flag in _POSITIVE
    return (x, y, positive)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X1,Y1,X2,Y2"``: corner box (top-left, bottom-right)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"--box {text!r}: expected X1,Y1,X2,Y2 (top-left and bottom-right)")
    x1, y1, x2, y2 = (_number(p, f"--box {text!r}") for p in parts)
    if x2 < x1 or y2 < y1:
        raise ValueError(
            f"--box {text!r}: need X1 <= X2 and Y1 <= Y2 (corners: top-left, bottom-right); "
            "for the API's center form use --prompts FILE.json"
        )
    return (x1, y1, x2, y2)


# -- helpers ---------------------------------------------------------------------------


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not a number") from None
    _coord(where, value)
    return int(value) if value.is_integer() else value


def _coord(what: str, v: Any) -> Number:
    """A finite python int/float (numpy scalars unwrapped), else ValueError."""
    v = _plain(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{what}: coordinates must be finite numbers, got {v!r}")
    return v


def _is_number(v: Any) -> bool:
    """A python or numpy number (int, float, bool, np.float32, a 0-d array...)."""
    return isinstance(v, (numbers.Number, np.bool_)) or (isinstance(v, np.ndarray) and v.ndim == 0)


def _rows(values: Any, what: str, widths: tuple[int, ...], example: str) -> list[Any]:
    """Points or boxes as a list of rows: one row, a list of rows, or an array (N, width)
    (numpy, or anything with ``__array__`` such as supervision's ``detections.xyxy``)."""
    if not isinstance(values, (list, tuple, Mapping)) and hasattr(values, "__array__"):
        arr = np.asarray(values)
        if arr.ndim == 1 and arr.shape[0] in widths:
            return [arr.tolist()]
        if arr.ndim == 2 and (arr.shape[0] == 0 or arr.shape[1] in widths):
            return arr.tolist()
        raise ValueError(
            f"{what}: an array must have shape (N, {' or '.join(map(str, widths))}) "
            f"({example}), got {arr.shape}"
        )
    if isinstance(values, Mapping):
        return [values]
    if len(values) and _is_number(values[0]):  # a single row
        return [values]
    return list(values)


def _as_point_list(points: Any) -> list[Sequence[Any]]:
    return _rows(points, "points", (2, 3), "x, y[, positive]")


def _as_box_list(boxes: Any) -> list[Sequence[Any]]:
    return _rows(boxes, "boxes", (4,), "x1, y1, x2, y2")


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _point_dict(p: Any) -> dict[str, Any]:
    if isinstance(p, Mapping):
        return point(p["x"], p["y"], bool(p.get("positive", True)))
    if len(p) not in (2, 3):
        raise ValueError(f"a point is (x, y) or (x, y, positive), got {p!r}")
    positive = bool(_plain(p[2])) if len(p) == 3 else True
    return point(p[0], p[1], positive)


def _box_tuple(b: Any) -> tuple[Number, Number, Number, Number]:
    if isinstance(b, Mapping):
        raise ValueError(
            "boxes= takes corner boxes (x1, y1, x2, y2); an API center box dict goes in prompts="
        )
    if len(b) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {b!r}")
    return (b[0], b[1], b[2], b[3])


def _api_prompts(prompts: Any) -> list[dict[str, Any]]:
    if prompts is None:
        return []
    if hasattr(prompts, "model_dump"):
        prompts = prompts.model_dump(exclude_none=True)
    if isinstance(prompts, Mapping):
        prompts = (prompts["prompts"] or []) if "prompts" in prompts else [prompts]
    out = []
    for p in prompts:
        if hasattr(p, "model_dump"):
            p = p.model_dump(exclude_none=True)
        if not isinstance(p, Mapping):
            raise TypeError(
                f"prompts= takes API prompt dicts ({{'box': ..., 'points': [...]}}), got "
                f"{type(p).__name__}; use points=/boxes= for tuples"
            )
        out.append(dict(p))
    return out
