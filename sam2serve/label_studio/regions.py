"""Label Studio regions -> sam2serve prompts, in pixels.

Label Studio places regions in percentages of the image (x, y of a rectangle's top-left
corner, width, height; a keypoint's x, y), each region carrying the image's pixel size
(`original_width`, `original_height`). Video rectangles carry a `sequence` of keyframes,
numbered from 1 at the config's `framerate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sam2serve.errors import BadRequest
from sam2serve.image.schema import Box, Point, Prompt

#: keyframes of one object used as prompts (those nearest where tracking starts; every
#: keyframe stays in the answer as drawn)
MAX_KEYFRAMES = 8
KEYPOINT_TYPES = frozenset({"keypointlabels", "keypoint"})
RECTANGLE_TYPES = frozenset({"rectanglelabels", "rectangle"})
FIELD = "params.context.result"


@dataclass
class ImagePrompts:
    """The prompts of one interactive call on one image.

    prompts: the first holds every keypoint and the first positive rectangle; each further
        positive rectangle is a prompt of its own (one mask per prompt).
    label: the label the annotator chose (the first positive region's), or None.
    to_name: the Image tag the regions are on; size: its (width, height) in pixels.
    """

    prompts: list[Prompt] = field(default_factory=list)
    label: str | None = None
    to_name: str = ""
    size: tuple[int, int] = (0, 0)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{where}: expected a number, got {value!r}", field=FIELD)
    return float(value)


def _value(region: dict[str, Any]) -> dict[str, Any]:
    value = region.get("value")
    return value if isinstance(value, dict) else {}


def _pct(value: Any, where: str) -> float:
    """A percentage, clamped to the image (Label Studio lets regions overhang its edge)."""
    return min(max(_number(value, where), 0.0), 100.0)


def _size(region: dict[str, Any], where: str) -> tuple[int, int]:
    w = _number(region.get("original_width"), f"{where}.original_width")
    h = _number(region.get("original_height"), f"{where}.original_height")
    if w < 1 or h < 1:
        raise BadRequest(f"{where}: original_width/height must be >= 1", field=FIELD)
    return int(w), int(h)


def region_label(region: dict[str, Any]) -> str | None:
    """The first label of a region (`value.keypointlabels`, `.rectanglelabels`, `.labels`...)."""
    value = _value(region)
    for key in (str(region.get("type", "")).lower(), "labels"):
        labels = value.get(key)
        if isinstance(labels, list) and labels and isinstance(labels[0], str):
            return labels[0]
    return None


def pct_box_to_pixels(value: dict[str, Any], width: int, height: int, where: str) -> Box:
    """A rectangle's {x, y, width, height} in % (top-left based) -> centre-based pixel Box,
    clamped to the image."""
    x, y, w, h = (
        _number(value.get(k), f"{where}.value.{k}") for k in ("x", "y", "width", "height")
    )
    x0, x1 = (min(max(v, 0.0), 100.0) * width / 100 for v in (x, x + max(w, 0.0)))
    y0, y1 = (min(max(v, 0.0), 100.0) * height / 100 for v in (y, y + max(h, 0.0)))
    return Box(x=(x0 + x1) / 2, y=(y0 + y1) / 2, width=x1 - x0, height=y1 - y0)


def image_prompts(results: Iterable[Any], negative_labels: Sequence[str]) -> ImagePrompts:
    """Keypoint and rectangle regions (other types are ignored) -> prompts in pixels.

    A keypoint is negative when Label Studio marks it so (`is_positive: false`, Alt+click) or
    its label is one of `negative_labels` (case-insensitive); a negative-labelled rectangle
    is not a prompt (SAM 2 boxes are positive only). Raises BadRequest naming the region."""
    negatives = {n.lower() for n in negative_labels}
    out = ImagePrompts()
    points: list[Point] = []
    boxes: list[Box] = []
    for i, region in enumerate(results):
        where = f"{FIELD}[{i}]"
        if not isinstance(region, dict):
            raise BadRequest(f"{where}: expected a region object", field=FIELD)
        kind = str(region.get("type", "")).lower()
        if kind not in KEYPOINT_TYPES | RECTANGLE_TYPES:
            continue
        width, height = _size(region, where)
        label = region_label(region)
        negative = region.get("is_positive") is False or (label or "").lower() in negatives
        if not out.to_name:
            out.to_name, out.size = str(region.get("to_name", "")), (width, height)
        if not negative and out.label is None:
            out.label = label
        value = _value(region)
        if kind in KEYPOINT_TYPES:
            x = _pct(value.get("x"), f"{where}.value.x") * width / 100
            y = _pct(value.get("y"), f"{where}.value.y") * height / 100
            points.append(Point(x=x, y=y, positive=not negative))
        elif not negative:
            boxes.append(pct_box_to_pixels(value, width, height, where))
    if not boxes and not any(p.positive for p in points):
        return ImagePrompts(label=out.label, to_name=out.to_name, size=out.size)
    out.prompts.append(Prompt(points=points or None, box=boxes[0] if boxes else None))
    out.prompts += [Prompt(box=box) for box in boxes[1:]]
    return out


# -- video ---------------------------------------------------------------------------------


@dataclass
class Keyframe:
    """One enabled keyframe of a tracked object: `frame` 1-based (Label Studio's), `box`
    {x, y, width, height} in % of the frame."""

    frame: int
    box: dict[str, float]


@dataclass
class VideoObject:
    """One VideoRectangle region: its `id`, label, control (`from_name`) and keyframes
    (sorted by frame)."""

    region_id: str
    label: str | None
    from_name: str
    to_name: str
    keyframes: list[Keyframe]

    def start(self) -> int:
        """Where tracking this object starts: its first keyframe not followed by one on the
        next frame. A box on every frame (an accepted earlier answer) is already tracked, so
        asking again continues after it; a single keyframe, or sparse ones, start at the
        first."""
        frames = {k.frame for k in self.keyframes}
        return next(k.frame for k in self.keyframes if k.frame + 1 not in frames)

    def prompts(self) -> list[Keyframe]:
        """At most MAX_KEYFRAMES keyframes as prompts: the last half of that at or before
        `start()`, then the first after it."""
        start = self.start()
        before = [k for k in self.keyframes if k.frame <= start][-(MAX_KEYFRAMES // 2) :]
        after = [k for k in self.keyframes if k.frame > start]
        return before + after[: MAX_KEYFRAMES - len(before)]


def video_objects(results: Iterable[Any]) -> list[VideoObject]:
    """VideoRectangle regions (others ignored) with at least one enabled keyframe."""
    objects = []
    for i, region in enumerate(results):
        where = f"{FIELD}[{i}]"
        if not isinstance(region, dict) or str(region.get("type", "")).lower() != "videorectangle":
            continue
        value = _value(region)
        sequence = value.get("sequence")
        keyframes = []
        for j, item in enumerate(sequence if isinstance(sequence, list) else []):
            if not isinstance(item, dict) or item.get("enabled", True) is False:
                continue
            frame = _number(item.get("frame"), f"{where}.value.sequence[{j}].frame")
            box = {
                k: _number(item.get(k), f"{where}.value.sequence[{j}].{k}")
                for k in ("x", "y", "width", "height")
            }
            keyframes.append(Keyframe(max(1, int(frame)), box))
        if keyframes:
            keyframes.sort(key=lambda k: k.frame)
            objects.append(
                VideoObject(
                    region_id=str(region.get("id") or f"sam2serve-{i}"),
                    label=region_label(region),
                    from_name=str(region.get("from_name", "")),
                    to_name=str(region.get("to_name", "")),
                    keyframes=keyframes,
                )
            )
    return objects
