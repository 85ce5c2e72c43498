"""Result parsing: masks decoded exactly, polygons filled with the image size, npz logits,
supervision Detections, and the annotated image."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sam2serve.client.results import SegmentResult, parse_segment
from sam2serve.media.annotate import annotate
from sam2serve.media.postprocess import encode_npz, mask_to_polygons, mask_to_rle, polygons_to_mask

H, W = 48, 64


def _masks() -> np.ndarray:
    """Two masks: a ring (with a hole) and two separate blobs; plus an empty one."""
    yy, xx = np.mgrid[:H, :W]
    ring = (np.hypot(yy - 20, xx - 20) < 12) & (np.hypot(yy - 20, xx - 20) > 5)
    blobs = np.zeros((H, W), bool)
    blobs[5:10, 40:50] = True
    blobs[30:44, 45:60] = True
    return np.stack([ring, blobs, np.zeros((H, W), bool)])


MASKS = _masks()


def _json_answer(fmt: str) -> dict:
    preds = []
    for i, m in enumerate(MASKS):
        masks = mask_to_rle(m) if fmt == "rle" else mask_to_polygons(m)
        preds.append(
            {"masks": masks, "confidence": 0.5 + i / 10, "format": fmt.replace("json", "polygon")}
        )
    return {"predictions": preds, "time": 0.25}


def test_rle_masks_are_exact_holes_included() -> None:
    result = parse_segment(_json_answer("rle"))
    assert result.image_size == (H, W) and result.time == 0.25
    np.testing.assert_array_equal(result.masks, MASKS)
    assert [p.format for p in result] == ["rle"] * 3
    np.testing.assert_allclose(result.confidences, [0.5, 0.6, 0.7])
    for pred, mask in zip(result, MASKS, strict=True):
        assert pred.mask.dtype == bool and pred.mask.shape == (H, W)
        assert pred.to_rle() == mask_to_rle(mask)
        assert pred.polygons == mask_to_polygons(mask)
        assert pred.area == int(mask.sum())
    assert result[1].box_xyxy == (40, 5, 59, 43)
    assert result[2].box_xyxy is None
    assert result.to_json() is result.raw


def test_polygons_are_filled_with_the_image_size() -> None:
    answer = _json_answer("json")
    result = parse_segment(answer, image_size=(H, W))
    for pred, mask in zip(result, MASKS, strict=True):
        assert pred.format == "polygon"
        assert pred.polygons == mask_to_polygons(mask)
        expected = polygons_to_mask(mask_to_polygons(mask), H, W)  # outer boundaries: no holes
        np.testing.assert_array_equal(pred.mask, expected)
        assert pred.to_rle() == mask_to_rle(expected)
    np.testing.assert_array_equal(result[1].mask, MASKS[1])  # no holes there: exact


def test_polygons_without_a_size_say_what_to_do() -> None:
    result = parse_segment(_json_answer("json"))
    assert result.image_size is None
    with pytest.raises(ValueError, match="format='rle'"):
        _ = result[0].mask


def test_binary_npz_gives_logits_masks_and_no_confidence() -> None:
    logits = np.where(MASKS, 3.0, -3.0).astype(np.float32)
    low = np.zeros((3, 16, 16), np.float32)
    result = parse_segment(encode_npz(logits, low))
    np.testing.assert_array_equal(result.masks, MASKS)
    assert result.image_size == (H, W) and result.raw is None
    assert all(p.confidence is None for p in result)
    assert np.isnan(result.confidences).all()
    assert result[0].low_res_logits.shape == (16, 16)
    assert result.to_json()["predictions"][1]["masks"] == mask_to_rle(MASKS[1])


def test_no_predictions() -> None:
    result = parse_segment({"predictions": [], "time": 0.0}, image_size=(H, W))
    assert len(result) == 0 and result.masks.shape == (0, H, W)


def test_to_detections_masks_boxes_confidences() -> None:
    import supervision as sv

    det = parse_segment(_json_answer("rle")).to_detections()
    assert isinstance(det, sv.Detections) and len(det) == 3
    assert det.mask.shape == (3, H, W) and det.mask.dtype == bool
    np.testing.assert_array_equal(det.mask, MASKS)
    assert det.xyxy.shape == (3, 4)
    np.testing.assert_array_equal(det.xyxy[:2], sv.mask_to_xyxy(MASKS[:2]))
    np.testing.assert_array_equal(det.xyxy[1], [40, 5, 59, 43])  # by hand: cols 40..59, rows 5..43
    np.testing.assert_array_equal(det.xyxy[2], [0, 0, 0, 0])  # empty mask
    np.testing.assert_allclose(det.confidence, [0.5, 0.6, 0.7])
    np.testing.assert_array_equal(det.class_id, [0, 1, 2])
    annotated = sv.MaskAnnotator().annotate(np.zeros((H, W, 3), np.uint8), det)
    assert annotated.shape == (H, W, 3)


def test_to_detections_without_supervision_names_the_extra(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(ImportError, match=r"sam2serve\[supervision\]"):
        parse_segment(_json_answer("rle")).to_detections()


# -- drawing ---------------------------------------------------------------------------

IMAGE = np.full((H, W, 3), 90, np.uint8)


def test_annotate_changes_the_mask_and_keeps_the_rest() -> None:
    square = np.zeros((H, W), bool)
    square[10:30, 10:30] = True
    out = annotate(IMAGE, [square])
    assert out.shape == IMAGE.shape and out.dtype == np.uint8
    assert (out[12:28, 12:28] != IMAGE[12:28, 12:28]).any(axis=2).all()  # overlay inside
    far = np.ones((H, W), bool)
    far[5:35, 5:35] = False  # away from the square and its outline
    np.testing.assert_array_equal(out[far], IMAGE[far])
    assert IMAGE.max() == 90  # input untouched


def test_annotate_draws_prompts_points_and_center_boxes() -> None:
    empty = np.zeros((H, W), bool)
    prompts = [
        {"points": [{"x": 50, "y": 10, "positive": True}, {"x": 50, "y": 40, "positive": False}]},
        {"box": {"x": 20, "y": 24, "width": 20, "height": 20}},
    ]
    out = annotate(IMAGE, [empty, empty], prompts)
    assert out[10, 50, 1] > out[10, 50, 0]  # positive point: green
    assert out[40, 50, 0] > out[40, 50, 1]  # negative point: red
    assert (out[14, 10:31] != 90).any(axis=1).all()  # top edge of box (10, 14)-(30, 34)
    assert (out[24, 20] == 90).all()  # box inside untouched


def test_annotate_refuses_mismatched_masks() -> None:
    with pytest.raises(ValueError, match="does not match"):
        annotate(IMAGE, [np.zeros((5, 5), bool)])
    with pytest.raises(ValueError, match="uint8"):
        annotate(IMAGE.astype(float), [])


def test_result_annotate_uses_its_source_image() -> None:
    result = parse_segment(_json_answer("rle"), source=IMAGE)
    out = result.annotate()
    assert out.shape == IMAGE.shape and not np.array_equal(out, IMAGE)
    no_source = SegmentResult(result.predictions, image_size=(H, W))
    with pytest.raises(ValueError, match="pass the image"):
        no_source.annotate()
    np.testing.assert_array_equal(no_source.annotate(IMAGE), out)
