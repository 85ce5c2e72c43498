"""SAM 3 concept answers without a model: thresholds, cross-prompt NMS, instance caps, the
mask budget, box conversion, the phrase cache and the request schema's bounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from sam2serve.sam3.schema import ConceptSegmentRequest, Sam3Limits, Sam3Prompt
from sam2serve.sam3.selection import (
    Candidate,
    candidates,
    mask_iou,
    max_masks_for,
    select,
)
from sam2serve.sam3.text_cache import TextCache


def _mask(*cells: int, side: int = 4) -> np.ndarray:
    """A side x side bool mask with the given flat cells set."""
    m = np.zeros(side * side, dtype=bool)
    m[list(cells)] = True
    return m.reshape(side, side)


@pytest.mark.parametrize(
    ("scores", "thresholds", "expected"),
    [
        # strictly over the threshold, as Sam3Processor keeps them
        ([[0.2, 0.5, 0.7]], [0.5], [(0, 2, 0.7)]),
        ([[0.2, 0.5, 0.7]], [0.1], [(0, 2, 0.7), (0, 1, 0.5), (0, 0, 0.2)]),
        # per-prompt thresholds; best first over all prompts
        ([[0.3, 0.6], [0.4, 0.9]], [0.5, 0.35], [(1, 1, 0.9), (0, 1, 0.6), (1, 0, 0.4)]),
        # ties: lower prompt, then lower query first
        ([[0.6, 0.6], [0.6]], [0.5, 0.5], [(0, 0, 0.6), (0, 1, 0.6), (1, 0, 0.6)]),
        ([[0.1], [0.2]], [0.5, 0.5], []),
    ],
)
def test_candidates(scores, thresholds, expected) -> None:  # type: ignore[no-untyped-def]
    got = candidates([np.array(s, dtype=np.float32) for s in scores], thresholds)
    assert [(c.prompt, c.query, pytest.approx(c.score)) for c in got] == expected


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        (_mask(0, 1), _mask(0, 1), 1.0),
        (_mask(0, 1), _mask(1, 2), 1 / 3),
        (_mask(0), _mask(5), 0.0),
        (_mask(), _mask(), 0.0),
    ],
)
def test_mask_iou(a, b, iou) -> None:  # type: ignore[no-untyped-def]
    assert mask_iou(a, b) == pytest.approx(iou)


MASKS = {  # (prompt, query) -> mask
    (0, 0): _mask(0, 1, 2, 3),
    (0, 1): _mask(0, 1, 2),  # IoU 0.75 with (0, 0)
    (0, 2): _mask(8, 9),
    (1, 0): _mask(0, 1, 2, 3),  # same object as (0, 0), other prompt
    (1, 1): _mask(12, 13),
}
SCORES = [np.array([0.9, 0.8, 0.6]), np.array([0.85, 0.7])]


def _select(nms, cap=10, max_masks=None, thresholds=(0.5, 0.5)):  # type: ignore[no-untyped-def]
    asked: list[tuple[int, int]] = []

    def mask_of(c: Candidate) -> np.ndarray:
        asked.append((c.prompt, c.query))
        return MASKS[(c.prompt, c.query)]

    found = candidates(SCORES, list(thresholds))
    sel = select(found, 2, mask_of, nms_iou=nms, per_prompt_cap=cap, max_masks=max_masks)
    return [[q for q, _, _ in k] for k in sel.kept], sel, asked


@pytest.mark.parametrize(
    ("nms", "expected"),
    [
        (None, [[0, 1, 2], [0, 1]]),  # NMS off: everything over the threshold
        (0.5, [[0, 2], [1]]),  # (0,1) and (1,0) overlap (0,0) by > 0.5: dropped
        (0.8, [[0, 1, 2], [1]]),  # 0.75 is not > 0.8: kept; (1,0) IoU 1.0: dropped
        (1.0, [[0, 1, 2], [0, 1]]),  # nothing overlaps by more than 1
    ],
)
def test_cross_prompt_nms(nms, expected) -> None:  # type: ignore[no-untyped-def]
    kept, sel, _ = _select(nms)
    assert kept == expected
    assert all(note is None for note in sel.notes)
    assert sel.found == [len(k) for k in kept]  # NMS drops duplicates, not instances


def test_answers_best_first_with_scores_and_masks() -> None:
    _, sel, _ = _select(None)
    assert [s for _, s, _ in sel.kept[0]] == pytest.approx([0.9, 0.8, 0.6])
    np.testing.assert_array_equal(sel.kept[1][1][2], MASKS[(1, 1)])


def test_per_prompt_cap_notes_and_never_computes_left_out_masks() -> None:
    kept, sel, asked = _select(None, cap=1)
    assert kept == [[0], [0]]
    assert sel.found == [3, 2]
    assert "3 instances found, the best 1 answered" in sel.notes[0]
    assert "SAM2SERVE_SAM3_MAX_INSTANCES_PER_PROMPT" in sel.notes[0]
    assert "2 instances found" in sel.notes[1]
    assert sorted(asked) == [(0, 0), (1, 0)]


def test_mask_budget_over_the_whole_request() -> None:
    kept, sel, asked = _select(None, max_masks=3)
    assert kept == [[0, 1], [0]]  # 0.9, 0.85, 0.8 are the best three
    assert all("SAM2SERVE_MAX_MASK_PIXELS" in (note or "") for note in sel.notes)
    assert len(asked) == 3


@pytest.mark.parametrize(
    ("budget", "hw", "fits"),
    [(0, (10, 10), None), (-1, (10, 10), None), (1000, (10, 10), 10), (99, (10, 10), 0)],
)
def test_max_masks_for(budget, hw, fits) -> None:  # type: ignore[no-untyped-def]
    assert max_masks_for(budget, hw) == fits


@pytest.mark.parametrize(
    ("box", "xyxy"),
    [
        ({"x": 10, "y": 20, "width": 30, "height": 40}, (10, 20, 40, 60)),  # top-left, not centre
        ({"x0": 1, "y0": 2, "x1": 3, "y1": 4}, (1, 2, 3, 4)),
    ],
)
def test_roboflow_box_forms(box, xyxy) -> None:  # type: ignore[no-untyped-def]
    prompt = Sam3Prompt.model_validate({"boxes": [box]})
    assert prompt.boxes[0].xyxy() == xyxy  # type: ignore[index]
    assert prompt.labels() == [True] and prompt.kind() == "visual"


@dataclass
class _Emb:
    nbytes: int


def test_text_cache_lru_by_entries_and_bytes() -> None:
    cache = TextCache(max_entries=2, max_bytes=100)
    cache.put("m", "car", _Emb(40))
    cache.put("m", "bus", _Emb(40))
    assert cache.get("m", "car") is not None  # car now most recent
    cache.put("m", "dog", _Emb(40))  # evicts bus (entries)
    assert cache.get("m", "bus") is None and cache.get("other", "car") is None
    cache.put("m", "cat", _Emb(90))  # needs 90 of 100 bytes: evicts both
    assert len(cache) == 1 and cache.bytes_used == 90
    cache.put("m", "huge", _Emb(101))  # over the whole budget: not kept
    assert cache.get("m", "huge") is None and cache.get("m", "cat") is not None
    assert TextCache(0, 100).put("m", "x", _Emb(1)) is None
    assert cache.describe()["hits"] == 2
    cache.put("n", "cat", _Emb(5))
    cache.drop_model("m")  # a reloaded model keeps none of its old phrases
    assert cache.get("m", "cat") is None and cache.get("n", "cat") is not None
    assert cache.bytes_used == 5


LIMITS = Sam3Limits(max_prompts=2, max_phrase_chars=10, max_boxes_per_prompt=2)
IMAGE = {"type": "base64", "value": "xx"}


def _request(**body):  # type: ignore[no-untyped-def]
    return ConceptSegmentRequest.model_validate(
        {"image": IMAGE, **body}, context={"sam3_limits": LIMITS}
    )


def test_roboflow_defaults() -> None:
    prompts = [{"type": "text", "text": "car"}, {"text": "bus", "output_prob_thresh": 0.2}]
    r = _request(prompts=prompts)
    assert (r.format, r.output_prob_thresh, r.nms_iou_threshold) == ("polygon", 0.5, None)
    assert r.threshold_of(0) == 0.5 and r.threshold_of(1) == 0.2
    assert _request(prompts=[{"text": "x"}], output_prob_thresh=None).threshold_of(0) == 0.5


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": [{"text": "a"}] * 3}, "over the limit of 2"),
        ({"prompts": [{"text": "a" * 11}]}, "over the limit of 10"),
        ({"prompts": [{}]}, "give `text`"),
        ({"prompts": [{"text": "  "}]}, "give `text`"),
        ({"prompts": [{"type": "visual", "text": "a"}]}, "needs at least one box"),
        ({"prompts": [{"boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1}] * 3}]}, "over the limit"),
        (
            {"prompts": [{"boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1}], "box_labels": [1, 0]}]},
            "one per box",
        ),
        (
            {"prompts": [{"boxes": [{"x0": 0, "y0": 0, "x1": 1, "y1": 1}], "box_labels": [2]}]},
            "use 1/true",
        ),
        ({"prompts": [{"boxes": [{"x0": 5, "y0": 0, "x1": 1, "y1": 1}]}]}, "x1 must be >= x0"),
        ({"prompts": [{"boxes": [{"x": 0, "y": 0, "width": -1, "height": 1}]}]}, "boxes"),
        ({"prompts": [{"text": "a", "output_prob_thresh": 1.5}]}, "output_prob_thresh"),
        ({"prompts": [{"text": "a"}], "nms_iou_threshold": -0.1}, "nms_iou_threshold"),
        ({"prompts": [{"text": "a"}], "format": "binary"}, "format"),
        ({"prompts": [{"text": "a"}], "image": None}, "send `image`"),
    ],
)
def test_refused_requests_name_the_problem(body, says) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=None) as info:
        _request(**body)
    assert says in str(info.value)


def test_text_cache_tracks_encodings_in_flight() -> None:
    import asyncio

    async def scenario() -> None:
        cache = TextCache(max_entries=4, max_bytes=100)
        gate = asyncio.Event()

        async def encode() -> dict[str, _Emb]:
            await gate.wait()
            return {"car": _Emb(1), "bus": _Emb(2)}

        task = asyncio.get_running_loop().create_task(encode())
        cache.track("m", ["car", "bus"], task)
        assert cache.pending("m", "car") is task and cache.pending("m", "dog") is None
        assert cache.pending("n", "car") is None  # per model
        assert cache.describe()["misses"] == 2 and cache.describe()["encoding"] == 2
        gate.set()
        await task
        await asyncio.sleep(0)  # done callbacks run
        assert cache.pending("m", "car") is None and cache.describe()["encoding"] == 0

        async def fail() -> dict[str, _Emb]:
            raise RuntimeError("lane full")

        failing = asyncio.get_running_loop().create_task(fail())
        cache.track("m", ["cat"], failing)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert cache.pending("m", "cat") is None  # a failed encoding is not joined later

    asyncio.run(scenario())
