"""Prompt conveniences: corner xyxy boxes -> the API's CENTER boxes, points, CLI strings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sam2serve.client.prompt_builder import (
    box_xyxy_to_center,
    build_prompts,
    parse_box,
    parse_point,
    point,
    prompt,
)

P1 = {"x": 10, "y": 20, "positive": True}
NEG = {"x": 5, "y": 6, "positive": False}
# (10, 20, 110, 70): centre (60, 45), 100 x 50 -- computed by hand
BOX_A = (10, 20, 110, 70)
CENTER_A = {"x": 60.0, "y": 45.0, "width": 100, "height": 50}
BOX_B = (0, 0, 3, 5)
CENTER_B = {"x": 1.5, "y": 2.5, "width": 3, "height": 5}


@pytest.mark.parametrize(
    ("xyxy", "center"),
    [
        (BOX_A, CENTER_A),
        (BOX_B, CENTER_B),
        ((7.5, 2.25, 7.5, 2.25), {"x": 7.5, "y": 2.25, "width": 0.0, "height": 0.0}),
        (tuple(np.array([10, 20, 110, 70])), CENTER_A),  # numpy scalars become python numbers
    ],
)
def test_box_xyxy_to_center_by_hand(xyxy, center) -> None:  # type: ignore[no-untyped-def]
    got = box_xyxy_to_center(*xyxy)
    assert got == center
    assert all(type(v) in (int, float) for v in got.values())


BUILD_CASES = [
    # (name, kwargs, expected prompts)
    ("nothing", {}, None),
    ("one point as a pair", {"points": (10, 20)}, [{"points": [P1]}]),
    ("points in one prompt", {"points": [(10, 20), (5, 6, False)]}, [{"points": [P1, NEG]}]),
    ("negative as 0", {"points": [(5, 6, 0)]}, [{"points": [NEG]}]),
    ("one box", {"boxes": BOX_A}, [{"box": CENTER_A}]),
    ("each box its own prompt", {"boxes": [BOX_A, BOX_B]}, [{"box": CENTER_A}, {"box": CENTER_B}]),
    ("points + first box", {"points": [(10, 20)], "boxes": [BOX_A]}, [
        {"box": CENTER_A, "points": [P1]}
    ]),
    ("points + two boxes", {"points": [(10, 20)], "boxes": [BOX_A, BOX_B]}, [
        {"box": CENTER_A, "points": [P1]},
        {"box": CENTER_B},
    ]),
    ("api json first, then conveniences", {
        "prompts": {"prompts": [{"box": CENTER_B}]},
        "points": [(10, 20)],
    }, [{"box": CENTER_B}, {"points": [P1]}]),
    ("a flat list of api prompts", {"prompts": [{"points": [P1]}, {"box": CENTER_A}]}, [
        {"points": [P1]},
        {"box": CENTER_A},
    ]),
    ("one api prompt object", {"prompts": {"points": [P1]}}, [{"points": [P1]}]),
    ("dict points", {"points": [{"x": 10, "y": 20}]}, [{"points": [P1]}]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"), BUILD_CASES, ids=[c[0] for c in BUILD_CASES]
)
def test_build_prompts(name: str, kwargs: dict, expected: list | None) -> None:
    assert build_prompts(**kwargs) == expected


def test_prompt_helper_and_pydantic_models() -> None:
    from sam2serve.image.schema import Prompt

    several = [prompt(points=[(10, 20)]), prompt(box=BOX_A), prompt([(5, 6, False)], BOX_B)]
    assert several == [
        {"points": [P1]},
        {"box": CENTER_A},
        {"box": CENTER_B, "points": [NEG]},
    ]
    model = Prompt.model_validate({"box": CENTER_A})
    assert build_prompts([model]) == [{"box": CENTER_A}]
    assert point(1, 2, positive=False) == {"x": 1, "y": 2, "positive": False}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"boxes": (110, 70, 10, 20)}, "corner box"),  # x2 < x1: a center box passed by mistake?
        ({"boxes": (10, 20, 30)}, "(x1, y1, x2, y2)"),
        ({"boxes": [{"x": 1, "y": 2, "width": 3, "height": 4}]}, "prompts="),
        ({"points": [(1, 2, True, 4)]}, "(x, y)"),
        ({"points": [(math.nan, 2)]}, "finite"),
        ({"points": [(math.inf, 2)]}, "finite"),
        ({"points": [("1", 2)]}, "finite"),
        ({"prompts": ["abc"]}, "prompt dicts"),
    ],
)
def test_build_prompts_rejects_with_a_clear_message(kwargs: dict, words: str) -> None:
    with pytest.raises(
        (ValueError, TypeError), match=words.replace("(", r"\(").replace(")", r"\)")
    ):
        build_prompts(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("320,240", (320, 240, True)),
        ("320, 240 ,neg", (320, 240, False)),
        ("1.5,2.5,pos", (1.5, 2.5, True)),
        ("3,4,0", (3, 4, False)),
        ("3,4,negative", (3, 4, False)),
    ],
)
def test_parse_point(text: str, expected: tuple) -> None:
    assert parse_point(text) == expected


@pytest.mark.parametrize("text", ["1", "1,2,3,4", "a,2", "1,2,maybe", "nan,1", "inf,2"])
def test_parse_point_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--point"):
        parse_point(text)


def test_parse_box() -> None:
    assert parse_box("10,20,110,70") == BOX_A
    assert build_prompts(boxes=[parse_box("10,20,110,70")]) == [{"box": CENTER_A}]


@pytest.mark.parametrize("text", ["1,2,3", "a,1,2,3", "10,20,5,70", "10,20,110,5"])
def test_parse_box_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--box"):
        parse_box(text)
