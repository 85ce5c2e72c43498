"""The SDK's segment_everything picks its route by `model=` (SAM 2's or SAM 3's), names the
model under that route's field, and reads both answers into the same `EverythingResult`;
sync and async clients alike, against a fake server (no model)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import numpy as np
import pytest

from sam2serve.client import AsyncSam2Client, AutoMaskPrediction, EverythingResult, Sam2Client
from sam2serve.client.everything import everything_call, is_sam3_model
from sam2serve.media.postprocess import mask_to_rle

RGB = np.zeros((20, 30, 3), np.uint8)
RGB[5:15, 10:20] = 200
BIG = RGB[:, :, 0] > 0
SMALL = np.zeros_like(BIG)
SMALL[6:9, 11:14] = True


def record(mask: np.ndarray, point: list[float]) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    return {
        "masks": mask_to_rle(mask), "confidence": 0.9, "format": "rle",
        "stability_score": 0.97, "area": int(mask.sum()), "point": point,
        "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
        "crop_box": [0, 0, 30, 20],
    }  # fmt: skip


ANSWER = {"predictions": [record(BIG, [12.0, 8.0]), record(SMALL, [12.5, 7.5])], "time": 0.25}

# model= -> (route, the body's model field and value; None: no model field)
ROUTES = [
    (None, "/sam2/segment_everything", None),
    ("hiera_tiny", "/sam2/segment_everything", ("sam2_version_id", "hiera_tiny")),
    ("sam2.1_hiera_large", "/sam2/segment_everything", ("sam2_version_id", "sam2.1_hiera_large")),
    ("sam3", "/sam3/segment_everything", ("model_id", "sam3")),
    ("sam3/sam3_final", "/sam3/segment_everything", ("model_id", "sam3/sam3_final")),
    (" SAM3_test_tiny", "/sam3/segment_everything", ("model_id", " SAM3_test_tiny")),
]


class EverythingServer:
    """Embeds answer 200 (both families); segment everything answers ANSWER, or 404 for an
    id-only request when `forgetful` (an evicted id)."""

    def __init__(self, forgetful: bool = False) -> None:
        self.forgetful = forgetful
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        if request.url.path.endswith("embed_image"):
            return httpx.Response(200, json={"image_id": body.get("image_id", "h"), "time": 0})
        if self.forgetful and "image" not in body:
            return httpx.Response(404, json={"message": "not in cache: send the image"})
        return httpx.Response(200, json=ANSWER)


def everything(client_cls: type, server: EverythingServer, model: str | None, **kw: Any) -> Any:
    """segment_everything through `client_cls` (embedding first when `kw` names an id)."""
    embed = "sam3_embed_image" if is_sam3_model(model) else "embed_image"
    image = None if "image_id" in kw else RGB
    if client_cls is Sam2Client:
        with Sam2Client(transport=httpx.MockTransport(server)) as c:
            if image is None:
                getattr(c, embed)(RGB, image_id=kw["image_id"], model=model)
            return c.segment_everything(image, model=model, points_per_side=4, **kw)

    async def go() -> Any:
        async with AsyncSam2Client(transport=httpx.MockTransport(server)) as c:
            if image is None:
                await getattr(c, embed)(RGB, image_id=kw["image_id"], model=model)
            return await c.segment_everything(image, model=model, points_per_side=4, **kw)

    return asyncio.run(go())


@pytest.mark.parametrize(("model", "route", "field"), ROUTES)
def test_the_model_picks_the_route_and_its_field(model, route, field) -> None:  # type: ignore[no-untyped-def]
    call = everything_call(RGB, None, model, False, {"points_per_side": 4})
    assert call.path == route
    named = {k: v for k, v in call.body.items() if k in ("sam2_version_id", "model_id")}
    assert named == (dict([field]) if field else {})
    assert call.body["format"] == "rle" and call.body["image"]["type"] == "base64"


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
@pytest.mark.parametrize(("model", "route", "field"), [ROUTES[0], ROUTES[1], ROUTES[4]])
def test_both_families_answer_the_same_result_type(client_cls, model, route, field) -> None:  # type: ignore[no-untyped-def]
    server = EverythingServer()
    result = everything(client_cls, server, model)
    assert [path for path, _ in server.calls] == [route]
    assert isinstance(result, EverythingResult) and result.time == 0.25
    assert all(isinstance(p, AutoMaskPrediction) for p in result)
    np.testing.assert_array_equal(result.masks, np.stack([BIG, SMALL]))
    assert [p.mask_area for p in result] == [int(BIG.sum()), int(SMALL.sum())]
    assert result[1].point == [12.5, 7.5] and result[0].crop_box == [0, 0, 30, 20]
    assert result.annotate().shape == RGB.shape
    sv = pytest.importorskip("supervision")
    det = result.to_detections()
    assert isinstance(det, sv.Detections) and det.class_id.tolist() == [0, 1]
    assert det.xyxy[0].tolist() == [10, 5, 19, 14]


@pytest.mark.parametrize("client_cls", [Sam2Client, AsyncSam2Client])
@pytest.mark.parametrize("model", [None, "sam3"])
def test_an_evicted_id_is_resent_once_to_its_own_route(client_cls, model) -> None:  # type: ignore[no-untyped-def]
    server = EverythingServer(forgetful=True)
    result = everything(client_cls, server, model, image_id="img")
    (embed_path, _), (first_path, first), (second_path, second) = server.calls
    family = "sam3" if model else "sam2"
    assert embed_path == f"/{family}/embed_image"
    assert first_path == second_path == f"/{family}/segment_everything"
    assert "image" not in first and second["image"]["type"] == "base64"
    assert result.image_id == "img" and len(result) == 2


def test_unknown_parameters_and_a_missing_image_are_value_errors() -> None:
    with pytest.raises(ValueError, match="points_per_sid"):
        everything_call(RGB, None, "sam3", False, {"points_per_sid": 3})
    with pytest.raises(ValueError, match="image_id"):
        everything_call(None, None, "sam3", False, {})
