"""POST /sam2/segment_everything on the tiny model: formats, cached images, bounds, budgets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from sam2serve.everything.generator import Stopped, generate
from sam2serve.everything.schema import EverythingParams
from sam2serve.media.postprocess import polygons_to_mask, rle_to_mask
from tests.conftest import encode_image, photos

# parameters that keep a few masks on random weights (see test_everything_fidelity)
PARAMS = {
    "points_per_side": 4,
    "mask_threshold": 0.2,
    "stability_score_offset": 0.05,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return photos()["coffee"][::2, ::2].copy()  # 200 x 300


@pytest.fixture
def torch_client(make_client):  # type: ignore[no-untyped-def]
    return make_client(runtime="torch")


def _post(client, image: np.ndarray | None = None, **extra: object):  # type: ignore[no-untyped-def]
    body: dict[str, object] = {**PARAMS, **extra}
    if image is not None:
        body["image"] = {"type": "base64", "value": encode_image(image)}
    return client.post("/sam2/segment_everything", json=body)


def _reference(client, image: np.ndarray, **extra: object) -> list:  # type: ignore[no-untyped-def]
    service = client.app.state.services.images
    runtime = service.pool._loaded[service.spec_for(None).model_id]
    return generate(runtime, EverythingParams(**{**PARAMS, **extra}), rgb=image)


@pytest.mark.slow
def test_rle_response_equals_the_core(torch_client, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    r = _post(torch_client, image, format="rle")
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    expected = _reference(torch_client, image)
    assert len(preds) == len(expected) > 0
    for p, e in zip(preds, expected, strict=True):
        assert p["format"] == "rle"
        assert (rle_to_mask(p["masks"]) == e.mask).all()
        assert p["confidence"] == pytest.approx(e.predicted_iou)
        assert p["stability_score"] == pytest.approx(e.stability_score)
        assert p["bbox"] == e.bbox and p["area"] == e.area and p["crop_box"] == e.crop_box
        assert p["point"] == pytest.approx(e.point)
    areas = [p["area"] for p in preds]
    assert areas == sorted(areas, reverse=True)


@pytest.mark.slow
def test_json_polygons_and_binary(torch_client, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    poly = _post(torch_client, image, polygon_holes=True).json()["predictions"]
    expected = _reference(torch_client, image)
    h, w = image.shape[:2]
    for p, e in zip(poly, expected, strict=True):
        assert p["format"] == "polygon"
        assert (polygons_to_mask(p["masks"], h, w) == e.mask).all()
    raw = _post(torch_client, image, format="binary")
    assert raw.headers["content-type"] == "application/octet-stream"
    npz = np.load(io.BytesIO(raw.content), allow_pickle=False)
    assert npz["masks"].shape == (len(expected), h, w)
    assert (npz["masks"] == np.stack([e.mask for e in expected])).all()
    assert npz["area"].tolist() == [e.area for e in expected]
    assert npz["bbox"].shape == (len(expected), 4)


@pytest.mark.slow
def test_cached_image_id_is_reused(torch_client, image: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    embed = torch_client.post(
        "/sam2/embed_image", json={"image": {"type": "base64", "value": encode_image(image)}}
    )
    image_id = embed.json()["image_id"]
    misses = torch_client.app.state.services.images.store.local.misses
    by_id = _post(torch_client, image_id=image_id, format="rle")
    assert by_id.status_code == 200, by_id.text
    assert torch_client.app.state.services.images.store.local.misses == misses
    assert (
        by_id.json()["predictions"]
        == _post(torch_client, image, format="rle").json()["predictions"]
    )


@pytest.mark.parametrize(
    ("extra", "status", "words"),
    [
        ({"points_per_side": 65}, 422, ["points_per_side", "64"]),
        ({"points_per_side": 0}, 422, ["points_per_side"]),
        ({"crop_n_layers": 3}, 422, ["crop_n_layers", "2"]),
        ({"points_per_batch": 1000}, 422, ["points_per_batch", "256"]),
        ({"pred_iou_thresh": 1.5}, 422, ["pred_iou_thresh"]),
        (
            {"crop_n_layers": 1, "points_per_side": 2, "crop_n_points_downscale_factor": 4},
            422,
            ["crop_n_points_downscale_factor"],
        ),
        ({"format": "png"}, 422, ["format"]),
    ],
)
def test_bounds_name_the_field(torch_client, image, extra, status, words) -> None:  # type: ignore[no-untyped-def]
    r = _post(torch_client, image, **extra)
    assert r.status_code == status, r.text
    assert all(w in r.json()["message"] for w in words), r.json()


def test_missing_image_and_unknown_id(torch_client) -> None:  # type: ignore[no-untyped-def]
    r = _post(torch_client)
    assert r.status_code == 422 and "image" in r.json()["message"]
    r = _post(torch_client, image_id="nope")
    assert r.status_code == 404 and r.json()["field"] == "image_id"
    r = _post(torch_client, image_id="nope", crop_n_layers=1)
    assert r.status_code == 400 and r.json()["field"] == "image"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "status", "word"),
    [
        ({"everything_max_points": 10}, 413, "points_per_side"),
        ({"everything_max_candidates": 1}, 413, "candidate masks"),
        ({"everything_max_seconds": 0.0}, 503, "time budget"),
    ],
)
def test_budgets(make_client, image, settings, status, word) -> None:  # type: ignore[no-untyped-def]
    client = make_client(runtime="torch", **settings)
    r = _post(client, image)
    assert r.status_code == status, r.text
    assert word in r.json()["message"]


def test_openapi_documents_the_route(torch_client) -> None:  # type: ignore[no-untyped-def]
    spec = torch_client.get("/openapi.json").json()
    op = spec["paths"]["/sam2/segment_everything"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/EverythingRequest"}
    props = spec["components"]["schemas"]["EverythingRequest"]["properties"]
    assert props["points_per_side"]["maximum"] == 64 and props["points_per_side"]["default"] == 32
    assert "crop_n_layers" in props and "use_m2m" in props


@pytest.mark.slow
def test_stops_between_batches(image: np.ndarray, tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
    from sam2serve.testing import tiny_test_spec

    spec = tiny_test_spec()
    runtime = TorchRuntime(
        spec.model_id,
        build_model(spec, tiny_weights_dir / spec.filename, torch.device("cpu")),
        torch.device("cpu"),
    )
    calls = []
    decode = runtime.decode
    runtime.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)  # type: ignore[method-assign]
    params = EverythingParams(**{**PARAMS, "points_per_batch": 4})  # 4 batches
    with pytest.raises(Stopped):
        generate(runtime, params, rgb=image, should_stop=lambda: len(calls) >= 1)
    assert len(calls) == 1


@pytest.mark.slow
def test_a_cancelled_request_stops_between_batches(image: np.ndarray, tiny_weights_dir) -> None:  # type: ignore[no-untyped-def]
    """The HTTP guard cancels the route of a client that went away: the batch running in
    the lane finishes, no further batch starts."""
    import asyncio
    import threading

    from sam2serve.everything.schema import EverythingRequest
    from sam2serve.everything.service import segment_everything
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import PUBLIC_NAMESPACE, build_services
    from tests.conftest import tiny_settings

    async def go() -> int:
        service = build_services(tiny_settings(tiny_weights_dir), registry_with_test_model()).images
        try:
            runtime = await service.pool.get(service.spec_for(None))
            calls: list[int] = []
            first = threading.Event()
            decode = runtime.decode

            def counted(*a, **k):  # type: ignore[no-untyped-def]
                calls.append(1)
                first.set()
                return decode(*a, **k)

            runtime.decode = counted  # type: ignore[method-assign]
            image_input = {"type": "base64", "value": encode_image(image)}
            body = {**PARAMS, "points_per_batch": 4, "image": image_input}
            request = EverythingRequest.model_validate(body)  # 4 batches of 4 points
            task = asyncio.ensure_future(segment_everything(service, request, PUBLIC_NAMESPACE))
            while not first.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.5)  # room for a further batch, were one to start
            return len(calls)
        finally:
            await service.aclose()

    assert asyncio.run(go()) == 1
