"""Segment everything behind the routes, the CLI and the in-process SDK.

Lifecycle: resolve the model, find or embed the image (the same cache as clicks, so one
embed serves both), then every batch of grid points as its own job on the embed lane (a
segment-everything never occupies the click lane, and other embeds interleave with it);
between batches it checks the time budget and whether the caller is still there.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Awaitable, Callable

import numpy as np

from sam2serve import postprocess
from sam2serve.api.responses import RleMask
from sam2serve.errors import BadRequest, PayloadTooLarge
from sam2serve.everything import (
    AutoMask,
    EverythingRun,
    Stopped,
    check_budget,
    crop_pixels,
)
from sam2serve.everything_schema import (
    EverythingPrediction,
    EverythingRequest,
    EverythingResponse,
)
from sam2serve.service import BinaryResult, Sam2Service

__all__ = ["Stopped", "segment_everything", "to_response"]


async def segment_everything(
    service: Sam2Service,
    request: EverythingRequest,
    namespace: str,
    is_disconnected: Callable[[], Awaitable[bool]] | None = None,
) -> EverythingResponse | BinaryResult:
    """Raises Stopped when `is_disconnected()` turns true (the remaining batches are
    skipped), PayloadTooLarge / Unavailable when over the configured budgets."""
    started = time.perf_counter()
    settings = service.settings
    params = request.params()
    if params.crop_n_layers > 0 and request.image is None:
        raise BadRequest(
            "crop_n_layers > 0 embeds each crop and needs the pixels: send `image` too "
            "(with image_id, the cached whole-image embedding is still reused)",
            field="image",
        )
    spec = service.spec_for(request.sam2_version_id)
    if request.image is not None:
        image = await service._load(request.image)
        rgb: np.ndarray | None = image.rgb
        got = await service._embed(spec, namespace, image, request.image_id)
    else:
        rgb = None
        got = await service._image_for_segment(spec, namespace, request)  # type: ignore[arg-type]
    runtime = await service.pool.get(spec)
    run = EverythingRun(
        runtime, params, got.features.orig_hw, max_candidates=settings.everything_max_candidates
    )
    if run.total_points > settings.everything_max_points:
        raise PayloadTooLarge(
            f"{run.total_points} grid points over {len(run.crops)} crops is over this server's "
            f"limit of {settings.everything_max_points}: lower points_per_side or crop_n_layers",
            field="points_per_side",
        )
    deadline = time.monotonic() + settings.everything_max_seconds
    lane = service.embed_lane

    async def checkpoint() -> None:
        gone = is_disconnected is not None and await is_disconnected()
        check_budget(deadline, lambda: gone)

    for crop in run.crops:
        await checkpoint()
        if crop.is_whole_image:
            features = got.features
        else:
            assert rgb is not None
            features = await lane.run(runtime.embed, crop_pixels(rgb, crop))
        for points in run.batches(crop):
            await checkpoint()
            await lane.run(run.process_batch, crop, features, points)
        run.finish_crop(crop)
    await checkpoint()
    masks = await lane.run(run.finish)
    result = to_response(masks, request.format, request.polygon_holes)
    if isinstance(result, EverythingResponse):
        result.time = time.perf_counter() - started
    return result


def to_response(
    masks: list[AutoMask], fmt: str, holes: bool = False
) -> EverythingResponse | BinaryResult:
    """json (polygons) / rle -> EverythingResponse; binary -> an .npz body with masks
    (N, H, W) bool and one array per record field."""
    if fmt == "binary":
        return BinaryResult(encode_npz(masks))
    predictions = []
    for m in masks:
        if fmt == "rle":
            encoded: object = RleMask(**postprocess.mask_to_rle(m.mask))
        else:
            encoded = postprocess.mask_to_polygons(m.mask, holes=holes)
        predictions.append(
            EverythingPrediction(
                masks=encoded,  # type: ignore[arg-type]
                confidence=m.predicted_iou,
                # upstream's stability of an empty mask is 0/0 = nan; JSON has no nan
                stability_score=m.stability_score if math.isfinite(m.stability_score) else 0.0,
                bbox=m.bbox,
                area=m.area,
                point=m.point,
                crop_box=m.crop_box,
                format="rle" if fmt == "rle" else "polygon",
            )
        )
    return EverythingResponse(predictions=predictions, time=0.0)


def encode_npz(masks: list[AutoMask]) -> bytes:
    """masks (N, H, W) bool, confidence / stability_score (N,) float32, bbox (N, 4) float32,
    area (N,) int64, point (N, 2) float32, crop_box (N, 4) int64."""
    buf = io.BytesIO()
    n = len(masks)
    np.savez_compressed(
        buf,
        masks=np.stack([m.mask for m in masks]) if n else np.zeros((0, 0, 0), dtype=bool),
        confidence=np.array([m.predicted_iou for m in masks], dtype=np.float32),
        stability_score=np.array([m.stability_score for m in masks], dtype=np.float32),
        bbox=np.array([m.bbox for m in masks], dtype=np.float32).reshape(n, 4),
        area=np.array([m.area for m in masks], dtype=np.int64),
        point=np.array([m.point for m in masks], dtype=np.float32).reshape(n, 2),
        crop_box=np.array([m.crop_box for m in masks], dtype=np.int64).reshape(n, 4),
    )
    return buf.getvalue()
