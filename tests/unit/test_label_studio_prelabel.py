"""Labeling config -> SAM 3 pre-label phrases: which controls count, the phrase of each label
(lower-cased, or SAM2SERVE_LABEL_STUDIO_PHRASES), labels sharing a phrase, the request
chunks; the mapping setting validated at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sam2serve.config import Settings
from sam2serve.label_studio.labeling_config import parse_config
from sam2serve.label_studio.prelabel import Phrase, chunks, phrases_for, prelabel_controls


def _config(*controls: str) -> str:
    return '<View><Image name="img" value="$image"/>' + "".join(controls) + "</View>"


BRUSH = (
    '<BrushLabels name="b" toName="img"><Label value="Car"/><Label value="Person"/></BrushLabels>'
)
POLY = (
    '<PolygonLabels name="p" toName="img">'
    '<Label value="Person"/><Label value="Tree"/></PolygonLabels>'
)
RECT = '<RectangleLabels name="r" toName="img"><Label value="Sign"/></RectangleLabels>'
KEYPOINTS = '<KeyPointLabels name="k" toName="img"><Label value="Dog"/></KeyPointLabels>'
EMPTY_BRUSH = '<BrushLabels name="e" toName="img"></BrushLabels>'
OTHER_IMAGE = (
    '<Image name="other" value="$other"/>'
    '<BrushLabels name="o" toName="other"><Label value="Cat"/></BrushLabels>'
)


@pytest.mark.parametrize(
    ("controls", "mapping", "want"),
    [
        ((BRUSH,), {}, [Phrase("car", ("Car",)), Phrase("person", ("Person",))]),
        (
            (BRUSH, POLY),  # Person on both controls: one phrase
            {},
            [Phrase("car", ("Car",)), Phrase("person", ("Person",)), Phrase("tree", ("Tree",))],
        ),
        ((RECT,), {"Sign": "Stop Sign"}, [Phrase("Stop Sign", ("Sign",))]),  # as configured
        (
            (BRUSH,),
            {"Car": "vehicle", "Person": "vehicle"},  # two labels, one phrase: one prompt
            [Phrase("vehicle", ("Car", "Person"))],
        ),
        ((BRUSH,), {"Dog": "dog"}, [Phrase("car", ("Car",)), Phrase("person", ("Person",))]),
        ((KEYPOINTS,), {}, []),  # prompts, not answers
        ((EMPTY_BRUSH,), {}, []),  # no labels
        ((OTHER_IMAGE,), {}, []),  # on another image
    ],
)
def test_phrases_for(controls: tuple[str, ...], mapping: dict[str, str], want: list) -> None:
    config = parse_config(_config(*controls))
    assert phrases_for(prelabel_controls(config, "img"), mapping) == want


def test_prelabel_controls_keep_config_order() -> None:
    config = parse_config(_config(RECT, KEYPOINTS, BRUSH, EMPTY_BRUSH, POLY))
    assert [c.name for c in prelabel_controls(config, "img")] == ["r", "b", "p"]


@pytest.mark.parametrize(("size", "want"), [(1, [1, 1, 1]), (2, [2, 1]), (16, [3])])
def test_chunks(size: int, want: list[int]) -> None:
    phrases = [Phrase(t, (t,)) for t in "abc"]
    parts = chunks(phrases, size)
    assert [len(p) for p in parts] == want and [p for part in parts for p in part] == phrases


def test_phrase_mapping_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAM2SERVE_LABEL_STUDIO_PHRASES", '{"Car": " red car "}')
    assert Settings().label_studio_phrases == {"Car": "red car"}
    for bad in ('{"Car": ""}', '{"": "car"}', '{"Car": "' + "x" * 201 + '"}'):
        monkeypatch.setenv("SAM2SERVE_LABEL_STUDIO_PHRASES", bad)
        with pytest.raises(ValidationError, match="label_studio_phrases"):
            Settings()


def test_prelabel_threshold_setting_is_a_probability(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().label_studio_prelabel_threshold == 0.5  # SAM 3's default
    monkeypatch.setenv("SAM2SERVE_LABEL_STUDIO_PRELABEL_THRESHOLD", "1.5")
    with pytest.raises(ValidationError, match="label_studio_prelabel_threshold"):
        Settings()
