"""Unit tests for sam2serve.media.postprocess: tables of tiny arrays, plus seeded random sweeps."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from sam2serve.media.postprocess import (
    encode_npz,
    logits_to_mask,
    mask_to_polygons,
    mask_to_rle,
    polygons_to_mask,
    rle_to_mask,
    select_best,
)

# pycocotools' decode trips a numpy-2 DeprecationWarning inside its own Cython code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _mask(rows: list[str]) -> np.ndarray:
    """Build a bool mask from strings: '#' = inside, '.' = outside."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def _signed_area(poly: list[list[int]]) -> float:
    """Shoelace signed area in image coordinates (y down)."""
    p = np.asarray(poly, dtype=float)
    x, y = p[:, 0], p[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) / 2


def _random_masks(n: int, max_side: int = 40, seed: int = 0) -> list[np.ndarray]:
    """Random masks of random shapes: salt-and-pepper and blurred (blobby) ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(1, max_side, 2))
        noise = rng.random((h, w))
        k = int(rng.integers(0, 4))
        if k:
            noise = cv2.GaussianBlur(noise, (2 * k + 1, 2 * k + 1), 0)
        out.append(noise < rng.uniform(0.2, 0.8))
    return out


DONUT = _mask(
    [
        ".......",
        ".#####.",
        ".#...#.",
        ".#...#.",
        ".#...#.",
        ".#####.",
        ".......",
    ]
)
PIXEL_HOLE = _mask(["###", "#.#", "###"])
ISLAND_IN_HOLE = _mask(
    [
        "#######",
        "#.....#",
        "#.###.#",
        "#.#.#.#",
        "#.###.#",
        "#.....#",
        "#######",
    ]
)
TWO_HOLES = _mask(["#####", "#.#.#", "#####"])
DIAGONAL_HOLES = _mask(["####", "#.##", "##.#", "####"])


# ----------------------------------------------------------------------------- select_best


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        pytest.param([[0.1, 0.9, 0.3]], [1], id="clear-max"),
        pytest.param([[0.5, 0.5, 0.2]], [1], id="tie-first-two"),
        pytest.param([[0.2, 0.9, 0.9]], [2], id="tie-last-two"),
        pytest.param([[0.9, 0.1, 0.9]], [2], id="tie-ends"),
        pytest.param([[0.7, 0.7, 0.7]], [2], id="all-tied"),
        pytest.param([[0.3]], [0], id="N1-C1"),
        pytest.param([[0.3], [-1.0], [5.0]], [0, 0, 0], id="C1"),
        pytest.param([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.2, 0.3, 0.1]], [2, 0, 1], id="rows"),
        pytest.param([[-3.0, -1.0, -2.0]], [1], id="negative"),
    ],
)
def test_select_best_table(scores: list[list[float]], expected: list[int]) -> None:
    for dtype in (np.float32, np.float64):
        got = select_best(np.array(scores, dtype=dtype))
        assert got.shape == (len(expected),)
        assert np.issubdtype(got.dtype, np.integer)
        assert got.tolist() == expected


@pytest.mark.parametrize("seed", range(20))
def test_select_best_matches_reference_argsort(seed: int) -> None:
    """Same as Roboflow's server's per-row ``np.argsort(score)[-1]``, ties included."""
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    scores = rng.integers(0, 3, (n, c)).astype(np.float32) / 2  # many ties
    expected = [int(np.argsort(row)[-1]) for row in scores]
    assert select_best(scores).tolist() == expected


@pytest.mark.parametrize("c", [1, 2, 3])
def test_select_best_ties_pick_last_for_sam2_sizes(c: int) -> None:
    """Every tie pattern of C <= 3 candidates: the LAST of the tied maxima wins."""
    rows = np.array(list(itertools.product([0.0, 0.5, 1.0], repeat=c)), dtype=np.float32)
    last = c - 1 - np.argmax(rows[:, ::-1], axis=1)
    assert select_best(rows).tolist() == last.tolist()


@pytest.mark.parametrize("shape", [(3,), (2, 0), (1, 2, 3)])
def test_select_best_rejects_bad_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        select_best(np.zeros(shape, dtype=np.float32))


# ----------------------------------------------------------------------------- logits_to_mask


@pytest.mark.parametrize(
    ("logits", "threshold", "expected"),
    [
        pytest.param([[-1.0, 0.0, 1e-6]], 0.0, [[False, False, True]], id="zero-is-outside"),
        pytest.param([[0.5, 1.5]], 1.0, [[False, True]], id="threshold"),
        pytest.param([[[-2.0]], [[3.0]]], 0.0, [[[False]], [[True]]], id="stacked"),
    ],
)
def test_logits_to_mask(logits: list, threshold: float, expected: list) -> None:
    got = logits_to_mask(np.array(logits, dtype=np.float32), threshold)
    assert got.dtype == np.bool_
    assert got.tolist() == expected


# ----------------------------------------------------------------------------- polygons


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        pytest.param(_mask(["...", ".#.", "..."]), [[[1, 1]]], id="single-pixel"),
        pytest.param(_mask(["#"]), [[[0, 0]]], id="1x1-full"),
        pytest.param(_mask([".....", ".###.", "....."]), [[[1, 1], [3, 1]]], id="h-line"),
        pytest.param(_mask([".#.", ".#.", ".#."]), [[[1, 0], [1, 2]]], id="v-line"),
        pytest.param(_mask(["#..", ".#.", "..#"]), [[[0, 0], [2, 2]]], id="diag-line"),
        pytest.param(_mask(["##", "##"]), [[[0, 0], [0, 1], [1, 1], [1, 0]]], id="square"),
        pytest.param(_mask(["...", "..."]), [], id="empty"),
    ],
)
def test_polygons_exact_small(mask: np.ndarray, expected: list) -> None:
    """Degenerate contours (1 or 2 points) are kept, empty gives []."""
    assert mask_to_polygons(mask) == expected
    if mask.any():
        assert (polygons_to_mask(expected, *mask.shape) == mask).all()


@pytest.mark.parametrize(
    ("mask", "n_default", "n_holes"),
    [
        pytest.param(_mask(["##...", "##...", "...##"]), 2, 2, id="two-blobs"),
        pytest.param(_mask(["#.#.#"]), 3, 3, id="three-pixels"),
        pytest.param(_mask(["#.", ".#"]), 1, 1, id="8-connected-diagonal"),
        pytest.param(DONUT, 1, 2, id="donut"),
        pytest.param(PIXEL_HOLE, 1, 2, id="one-pixel-hole"),
        pytest.param(TWO_HOLES, 1, 3, id="two-holes"),
        pytest.param(DIAGONAL_HOLES, 1, 3, id="diagonal-holes"),
        pytest.param(ISLAND_IN_HOLE, 1, 4, id="island-in-hole"),
        pytest.param(np.zeros((4, 4), bool), 0, 0, id="empty"),
        pytest.param(np.ones((3, 5), bool), 1, 1, id="all-true"),
    ],
)
def test_polygon_counts(mask: np.ndarray, n_default: int, n_holes: int) -> None:
    assert len(mask_to_polygons(mask)) == n_default
    assert len(mask_to_polygons(mask, holes=True)) == n_holes


@pytest.mark.parametrize(
    ("mask", "filled"),
    [
        pytest.param(DONUT, _mask([".......", *[".#####."] * 5, "......."]), id="donut"),
        pytest.param(PIXEL_HOLE, np.ones((3, 3), bool), id="one-pixel-hole"),
        pytest.param(TWO_HOLES, np.ones((3, 5), bool), id="two-holes"),
        pytest.param(ISLAND_IN_HOLE, np.ones((7, 7), bool), id="island-in-hole"),
    ],
)
def test_default_polygons_are_outer_boundaries(mask: np.ndarray, filled: np.ndarray) -> None:
    """Like Roboflow's server: holes are not represented, filling gives a solid part."""
    assert (polygons_to_mask(mask_to_polygons(mask), *mask.shape) == filled).all()


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(DONUT, id="donut"),
        pytest.param(PIXEL_HOLE, id="one-pixel-hole"),
        pytest.param(TWO_HOLES, id="two-holes"),
        pytest.param(DIAGONAL_HOLES, id="diagonal-holes"),
        pytest.param(ISLAND_IN_HOLE, id="island-in-hole"),
        pytest.param(_mask(["#.#", ".#.", "#.#"]), id="x-shape"),
    ],
)
def test_holes_reconstruct_exactly_with_one_fillpoly(mask: np.ndarray) -> None:
    polys = mask_to_polygons(mask, holes=True)
    canvas = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(canvas, [np.array(p, np.int32) for p in polys], 1)  # the client recipe
    assert (canvas.astype(bool) == mask).all()


@pytest.mark.parametrize("seed", range(8))
def test_holes_reconstruct_exactly_random(seed: int) -> None:
    for mask in _random_masks(150, seed=seed):
        polys = mask_to_polygons(mask, holes=True)
        assert (polygons_to_mask(polys, *mask.shape) == mask).all()


def test_fillpoly_is_even_odd_across_polygons() -> None:
    """The premise of the holes representation: one fillPoly call XORs overlaps."""
    a = np.array([[1, 1], [1, 6], [6, 6], [6, 1]], np.int32)
    b = a + 2
    together = np.zeros((10, 10), np.uint8)
    cv2.fillPoly(together, [a, b], 1)
    separate = np.zeros((10, 10), np.uint8)
    cv2.fillPoly(separate, [a], 1)
    cv2.fillPoly(separate, [b], 1)
    assert together[4:6, 4:6].sum() == 0  # strict overlap cleared
    assert separate[4:6, 4:6].all()
    assert together[3, 3:7].all() and together[3:7, 3].all()  # shared edge pixels stay set


@pytest.mark.parametrize("seed", range(4))
def test_holes_order_each_outer_then_its_holes(seed: int) -> None:
    """Outers have signed area <= 0, holes > 0; each hole lies inside the outer before it."""
    for mask in [*_random_masks(100, seed=100 + seed), ISLAND_IN_HOLE, TWO_HOLES]:
        polys = mask_to_polygons(mask, holes=True)
        assert len(polys) >= len(mask_to_polygons(mask))  # islands in holes are outers too
        outer = None
        for poly in polys:
            if _signed_area(poly) <= 0:
                outer = np.array(poly, np.int32)
                continue
            assert outer is not None, "a hole must follow its outer boundary"
            for x, y in poly:
                assert cv2.pointPolygonTest(outer, (float(x), float(y)), False) >= 0


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_polygon_points_are_python_ints_in_bounds(holes: bool, seed: int) -> None:
    for mask in [*_random_masks(80, seed=seed), np.ones((1, 1), bool), np.ones((4, 9), bool)]:
        h, w = mask.shape
        for poly in mask_to_polygons(mask, holes=holes):
            assert len(poly) >= 1
            for point in poly:
                assert len(point) == 2
                x, y = point
                assert type(x) is int and type(y) is int
                assert 0 <= x <= w - 1 and 0 <= y <= h - 1


def _disc() -> np.ndarray:
    return cv2.circle(np.zeros((200, 300), np.uint8), (150, 100), 70, 1, -1).astype(bool)


def _ellipse() -> np.ndarray:
    canvas = np.zeros((200, 300), np.uint8)
    return cv2.ellipse(canvas, (140, 110), (120, 45), 30, 0, 360, 1, -1).astype(bool)


def _rotated_rect() -> np.ndarray:
    corners = cv2.boxPoints(((150.0, 100.0), (180.0, 60.0), 37.0))
    canvas = np.zeros((200, 300), np.uint8)
    return cv2.fillPoly(canvas, [np.round(corners).astype(np.int32)], 1).astype(bool)


def _two_discs() -> np.ndarray:
    canvas = np.zeros((200, 300), np.uint8)
    cv2.circle(canvas, (60, 60), 40, 1, -1)
    cv2.circle(canvas, (220, 140), 50, 1, -1)
    return canvas.astype(bool)


def _edge_touching() -> np.ndarray:
    return cv2.circle(np.zeros((200, 300), np.uint8), (0, 199), 90, 1, -1).astype(bool)


@pytest.mark.parametrize("make", [_disc, _ellipse, _rotated_rect, _two_discs, _edge_touching])
@pytest.mark.parametrize("holes", [False, True])
def test_filled_polygons_cover_smooth_masks(make: Callable[[], np.ndarray], holes: bool) -> None:
    mask = make()
    filled = polygons_to_mask(mask_to_polygons(mask, holes=holes), *mask.shape)
    iou = (filled & mask).sum() / (filled | mask).sum()
    assert iou >= 0.98


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        pytest.param(np.zeros((3, 3), np.float32), TypeError, id="float"),
        pytest.param(np.zeros((1, 3, 3), bool), ValueError, id="3d"),
        pytest.param(np.zeros(3, bool), ValueError, id="1d"),
    ],
)
def test_polygons_reject_bad_input(mask: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error):
        mask_to_polygons(mask)


# ----------------------------------------------------------------------------- RLE

RLE_SHAPES = [(1, 1), (1, 17), (17, 1), (7, 13), (13, 7), (64, 48), (3, 300)]


@pytest.mark.parametrize("shape", RLE_SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_rle_round_trip_random(shape: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < rng.uniform(0.05, 0.95)
    rle = mask_to_rle(mask)
    assert rle["size"] == list(shape)
    assert all(type(v) is int for v in rle["size"])
    assert isinstance(rle["counts"], str)
    assert (rle_to_mask(rle) == mask).all()
    assert rle_to_mask(rle).dtype == np.bool_
    # agrees with pycocotools' own decode (and its own encode)
    theirs = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert (theirs.astype(bool) == mask).all()
    assert (
        coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
        == (rle["counts"])
    )


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(np.ones((5, 4), bool), id="all-true"),
        pytest.param(np.zeros((5, 4), bool), id="all-false"),
        pytest.param(np.ones((1, 1), bool), id="1x1-true"),
        pytest.param(np.zeros((1, 1), bool), id="1x1-false"),
        pytest.param(DONUT, id="donut"),
        pytest.param(np.eye(6, dtype=bool), id="diagonal"),
        pytest.param(np.eye(6, dtype=bool).T[::-1].copy(), id="anti-diagonal-strided"),
        pytest.param(np.eye(6, dtype=np.uint8), id="uint8-input"),
    ],
)
def test_rle_round_trip_table(mask: np.ndarray) -> None:
    rle = mask_to_rle(mask)
    assert (rle_to_mask(rle) == mask.astype(bool)).all()
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode("utf-8")}
    assert (rle_to_mask(as_bytes) == mask.astype(bool)).all()


def test_rle_non_contiguous_view() -> None:
    base = np.random.default_rng(7).random((20, 30)) < 0.5
    view = base[::2, 1::3]
    assert (rle_to_mask(mask_to_rle(view)) == view).all()


@pytest.mark.parametrize(
    "rle",
    [
        pytest.param({"counts": "0<"}, id="no-size"),
        pytest.param({"size": [3, 4]}, id="no-counts"),
        pytest.param({"size": [3, 4], "counts": 12}, id="int-counts"),
    ],
)
def test_rle_to_mask_rejects_bad_input(rle: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        rle_to_mask(rle)


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize(
    ("full_shape", "low_shape", "dtype"),
    [
        pytest.param((1, 5, 7), (1, 256, 256), np.float32, id="one"),
        pytest.param((3, 2, 1), (3, 4, 4), np.float32, id="three-tiny"),
        pytest.param((2, 9, 3), (2, 8, 8), np.float64, id="float64-cast"),
        pytest.param((1, 4, 4), (1, 4, 4), np.float16, id="float16-cast"),
        pytest.param((0, 4, 4), (0, 4, 4), np.float32, id="empty-batch"),
    ],
)
def test_npz_round_trip(full_shape: tuple, low_shape: tuple, dtype: type) -> None:
    rng = np.random.default_rng(0)
    full = rng.normal(size=full_shape).astype(dtype)
    low = rng.normal(size=low_shape).astype(dtype)
    data = encode_npz(full, low)
    assert isinstance(data, bytes)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        assert set(npz.files) == {"masks", "low_res_masks"}
        assert npz["masks"].dtype == np.float32
        assert npz["low_res_masks"].dtype == np.float32
        assert npz["masks"].shape == full_shape
        assert npz["low_res_masks"].shape == low_shape
        np.testing.assert_array_equal(npz["masks"], full.astype(np.float32))
        np.testing.assert_array_equal(npz["low_res_masks"], low.astype(np.float32))


@pytest.mark.parametrize(
    ("full", "low", "error"),
    [
        pytest.param(
            np.empty((1, 2, 2), object), np.zeros((1, 2, 2), np.float32), TypeError, id="object"
        ),
        pytest.param(np.zeros((1, 2, 2), np.float32), np.array([["a"]]), TypeError, id="strings"),
        pytest.param(
            np.zeros((2, 2), np.float32), np.zeros((1, 2, 2), np.float32), ValueError, id="2d"
        ),
        pytest.param(
            np.zeros((2, 2, 2), np.float32),
            np.zeros((1, 2, 2), np.float32),
            ValueError,
            id="count-mismatch",
        ),
    ],
)
def test_npz_rejects_bad_input(full: np.ndarray, low: np.ndarray, error: type) -> None:
    with pytest.raises(error):
        encode_npz(full, low)
