"""`SegmentOptions` (one description of a segment call) and the array-like inputs users have:
numpy arrays of points (N, 2) / (N, 3) and boxes (N, 4) (supervision's `detections.xyxy`),
numpy scalars, tuples and lists."""

from __future__ import annotations

import numpy as np
import pytest

from sam2serve.client import SegmentOptions
from sam2serve.client.prompt_builder import build_prompts, prompt
from sam2serve.image.schema import SegmentRequest

P1 = {"x": 10, "y": 20, "positive": True}
NEG = {"x": 5, "y": 6, "positive": False}
CENTER_A = {"x": 60.0, "y": 45.0, "width": 100, "height": 50}  # of (10, 20, 110, 70)
CENTER_B = {"x": 1.5, "y": 2.5, "width": 3, "height": 5}  # of (0, 0, 3, 5)

ARRAY_CASES = [
    # (name, kwargs, expected prompts)
    ("points (N, 2) int", {"points": np.array([[10, 20], [5, 6]])}, [
        {"points": [P1, {"x": 5, "y": 6, "positive": True}]}
    ]),
    ("points (N, 3) float with labels", {"points": np.array([[10, 20, 1], [5, 6, 0]], float)}, [
        {"points": [P1, NEG]}
    ]),
    ("one point (2,)", {"points": np.array([10, 20])}, [{"points": [P1]}]),
    ("boxes (N, 4) like detections.xyxy", {
        "boxes": np.array([[10, 20, 110, 70], [0, 0, 3, 5]], dtype=np.float32)
    }, [{"box": CENTER_A}, {"box": CENTER_B}]),
    ("one box (4,)", {"boxes": np.array([10, 20, 110, 70])}, [{"box": CENTER_A}]),
    ("no detections (0, 4)", {"boxes": np.zeros((0, 4))}, None),
    ("numpy scalars in tuples", {
        "points": [(np.int64(10), np.float32(20))], "boxes": (np.int32(0), 0, 3, np.float64(5))
    }, [{"box": CENTER_B, "points": [P1]}]),
    ("numpy bool label", {"points": [(5, 6, np.False_)]}, [{"points": [NEG]}]),
    ("list of numpy rows", {"boxes": [np.array([10, 20, 110, 70]), np.array([0, 0, 3, 5])]}, [
        {"box": CENTER_A}, {"box": CENTER_B}
    ]),
    ("tuple of tuples", {"points": ((10, 20), (5, 6, False))}, [{"points": [P1, NEG]}]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"), ARRAY_CASES, ids=[c[0] for c in ARRAY_CASES]
)
def test_array_like_prompts(name: str, kwargs: dict, expected: list | None) -> None:
    got = build_prompts(**kwargs)
    assert got == expected
    for p in got or []:  # plain python numbers only: the body must serialise as JSON
        for v in [
            *p.get("box", {}).values(),
            *(x for q in p.get("points", []) for x in q.values()),
        ]:
            assert type(v) in (int, float, bool)


def test_prompt_helper_takes_arrays() -> None:
    assert prompt(np.array([[10, 20]]), np.array([10, 20, 110, 70])) == {
        "box": CENTER_A,
        "points": [P1],
    }


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"points": np.zeros((3, 4))}, "points: an array must have shape (N, 2 or 3)"),
        ({"boxes": np.zeros((2, 3))}, "boxes: an array must have shape (N, 4)"),
        ({"boxes": np.zeros((1, 2, 4))}, "boxes: an array must have shape (N, 4)"),
        ({"points": np.array([[np.nan, 1.0]])}, "finite"),
    ],
)
def test_bad_arrays_are_refused_with_the_shape(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build_prompts(**kwargs)


def test_options_are_keyword_only_and_validated() -> None:
    with pytest.raises(TypeError):
        SegmentOptions(None, None, np.zeros((1, 4)))  # type: ignore[misc]
    with pytest.raises(ValueError, match="format must be one of"):
        SegmentOptions(format="png")
    with pytest.raises(TypeError, match="unexpected keyword"):
        SegmentOptions.of(multimask=False)


def test_options_of_overrides_fields() -> None:
    base = SegmentOptions(boxes=np.array([[10, 20, 110, 70]]), format="json")
    assert SegmentOptions.of(base) is base
    changed = SegmentOptions.of(base, multimask_output=False)
    assert changed.format == "json" and changed.multimask_output is False
    assert base.multimask_output is True  # frozen: the shared options are untouched


def test_options_body_is_a_valid_request() -> None:
    opts = SegmentOptions(
        points=np.array([[10, 20, 1]]),
        boxes=np.array([[10, 20, 110, 70], [0, 0, 3, 5]]),
        multimask_output=False,
        format="polygon",
        model="hiera_tiny",
        mask_input=np.zeros((2, 4, 4)),
        save_logits_to_cache=True,
        polygon_holes=True,
    )
    body, prompts = opts.body()
    assert prompts == [{"box": CENTER_A, "points": [P1]}, {"box": CENTER_B}]
    assert body == {
        "multimask_output": False,
        "format": "json",
        "prompts": {"prompts": prompts},
        "sam2_version_id": "hiera_tiny",
        "mask_input": np.zeros((2, 4, 4)).tolist(),
        "save_logits_to_cache": True,
        "polygon_holes": True,
    }
    request = SegmentRequest.model_validate({**body, "image_id": "x"})
    assert len(request.prompt_list()) == 2 and request.format == "json"
    assert SegmentOptions().body() == ({"multimask_output": True, "format": "rle"}, None)
