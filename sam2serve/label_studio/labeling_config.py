"""A project's labeling config (Label Studio's XML) -> the controls sam2serve answers.

Only what the backend needs is read: the object tags (`Image`, `Video`: their `name`, the
task data key in `value="$key"`, a video's `framerate`) and the control tags attached to
them (`toName`) with their label values. Everything else in the config is ignored.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from sam2serve.errors import BadRequest

#: control tags whose regions become prompts (image), or keyframes (video)
PROMPT_TAGS = frozenset({"keypointlabels", "rectanglelabels", "keypoint", "rectangle"})
#: control tags sam2serve answers with masks
MASK_TAGS = frozenset({"brushlabels", "polygonlabels"})
VIDEO_TAGS = frozenset({"videorectangle"})
#: Label Studio's default <Video framerate>
DEFAULT_FRAMERATE = 24.0
MAX_CONFIG_CHARS = 1_000_000


@dataclass(frozen=True)
class Control:
    """One control tag: `kind` (lowercase tag, e.g. "brushlabels"), its `name`, the object
    tag it labels (`to_name`) and its label values in config order."""

    kind: str
    name: str
    to_name: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class MediaObject:
    """An `Image` or `Video` tag: `kind` "image" | "video", `name`, the task data key its
    `value="$key"` reads, and a video's frame rate (Label Studio numbers frames with it)."""

    kind: str
    name: str
    data_key: str
    framerate: float = DEFAULT_FRAMERATE


@dataclass(frozen=True)
class LabelingConfig:
    objects: dict[str, MediaObject] = field(default_factory=dict)
    controls: tuple[Control, ...] = ()

    def controls_for(self, to_name: str, kinds: frozenset[str]) -> list[Control]:
        return [c for c in self.controls if c.to_name == to_name and c.kind in kinds]

    def first_object(self, kind: str) -> MediaObject | None:
        return next((o for o in self.objects.values() if o.kind == kind), None)

    def describe(self) -> dict[str, list[str]]:
        """What sam2serve will do with this config, for /setup's answer."""
        return {
            "prompts": [c.name for c in self.controls if c.kind in PROMPT_TAGS],
            "masks": [c.name for c in self.controls if c.kind in MASK_TAGS],
            "video_tracks": [c.name for c in self.controls if c.kind in VIDEO_TAGS],
        }


def parse_config(xml: str | None) -> LabelingConfig:
    """Raises BadRequest (field label_config) when the XML does not parse."""
    if not xml or not xml.strip():
        return LabelingConfig()
    if len(xml) > MAX_CONFIG_CHARS:
        raise BadRequest(f"label_config: over {MAX_CONFIG_CHARS} characters", field="label_config")
    try:  # expat (Python >= 3.11's) caps entity expansion; no external entities are read
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise BadRequest(
            f"label_config: not valid XML ({exc}); check the project's labeling interface",
            field="label_config",
        ) from exc
    objects: dict[str, MediaObject] = {}
    controls: list[Control] = []
    for element in root.iter():
        tag = str(element.tag).lower()
        name = element.get("name", "")
        if tag in ("image", "video") and name:
            key = element.get("value", "").strip().lstrip("$")
            objects[name] = MediaObject(tag, name, key, _framerate(element.get("framerate")))
        elif tag in PROMPT_TAGS | MASK_TAGS | VIDEO_TAGS and name:
            labels = tuple(
                child.get("value", "")
                for child in element
                if str(child.tag).lower() == "label" and child.get("value")
            )
            to_name = element.get("toName", element.get("toname", ""))
            controls.append(Control(tag, name, to_name.split(",")[0].strip(), labels))
    return LabelingConfig(objects, tuple(controls))


def _framerate(raw: str | None) -> float:
    try:
        value = float(raw) if raw else DEFAULT_FRAMERATE
    except ValueError:
        return DEFAULT_FRAMERATE
    return value if value > 0 else DEFAULT_FRAMERATE
