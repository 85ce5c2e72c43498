"""Segment everything behind the routes, the CLI and the in-process SDK.

Lifecycle: resolve the model, find or embed the image (the same cache as clicks, so one
embed serves both), then every batch of grid points as its own job on the embed lane (a
segment-everything never occupies the click lane, and other embeds interleave with it);
between batches it checks the time budget. A caller that goes away cancels the coroutine
(the HTTP guard cancels the route on disconnect): the batch running in the lane finishes
and is dropped, a batch still waiting is never run, and no further batch starts.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from sam2serve.errors import BadRequest, PayloadTooLarge
from sam2serve.everything.generator import AutoMask, EverythingRun, check_budget, crop_pixels
from sam2serve.everything.schema import (
    EverythingPrediction,
    EverythingRequest,
    EverythingResponse,
)
from sam2serve.image.service import ImageService
from sam2serve.media import postprocess
from sam2serve.media.decode import LoadedImage
from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Features
from sam2serve.scheduling.lanes import Lane
from sam2serve.wire import BinaryResult, RleMask

__all__ = ["EverythingService", "encode_npz", "segment_everything", "to_response"]

T = TypeVar("T")


class EverythingService:
    """Segment everything on the image use case's features, lanes and runtimes."""

    def __init__(self, images: ImageService) -> None:
        self.images = images

    async def segment(
        self,
        request: EverythingRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> EverythingResponse | BinaryResult:
        """Every object of the image as a mask (see `segment_everything`)."""
        return await segment_everything(self.images, request, namespace, pixels=pixels)


async def segment_everything(
    service: ImageService,
    request: EverythingRequest,
    namespace: str,
    *,
    pixels: LoadedImage | None = None,
    spec: ModelSpec | None = None,
    as_features: Callable[[Any, Any], Features] | None = None,
    predictor_regions: bool = True,
) -> EverythingResponse | BinaryResult:
    """Every object of the image as a mask.

    `pixels`: an image already decoded in this process (the in-process Segmenter), used
    instead of `request.image` and cached under `request.image_id`. Raises
    PayloadTooLarge / Unavailable when over the configured budgets.
    `spec`: the model (default: `request.sam2_version_id`'s); `as_features(runtime, value)`:
    what the store (or a crop's embed) holds -> the decoder's `Features` (SAM 3: its
    instance predictor's view of its features; default: the value itself).
    `predictor_regions`: see `EverythingRun` (False: the runtime's own post-processing).
    """
    started = time.perf_counter()
    settings = service.settings
    params = request.params()
    if params.crop_n_layers > 0 and request.image is None and pixels is None:
        raise BadRequest(
            "crop_n_layers > 0 embeds each crop and needs the pixels: send `image` too "
            "(with image_id, the cached whole-image embedding is still reused)",
            field="image",
        )
    if params.total_points() > settings.everything_max_points:  # before any image work
        raise PayloadTooLarge(
            f"{params.total_points()} grid points over {params.crop_count()} crops is over this "
            f"server's limit of {settings.everything_max_points}: lower points_per_side or "
            "crop_n_layers",
            field="points_per_side",
        )
    spec = spec or service.spec_for(request.sam2_version_id)
    view = as_features or _as_is
    image = pixels
    if image is None and request.image is not None:
        image = await service.load(request.image, namespace)
    scope = await service.scope(namespace, spec)
    stored = await service.store.features(scope, request.image_id, image)
    runtime = scope.runtime
    features = view(runtime, stored.features)
    run = EverythingRun(
        runtime,
        params,
        features.orig_hw,
        max_candidates=settings.everything_max_candidates,
        predictor_regions=predictor_regions,
    )
    deadline = time.monotonic() + settings.everything_max_seconds
    lane = service.embed_lane

    for crop in run.crops:
        check_budget(deadline, None)
        if crop.is_whole_image:
            crop_features = features
        else:
            assert image is not None
            crop_rgb = crop_pixels(image.rgb, crop)
            crop_features = view(runtime, await _step(lane, namespace, runtime.embed, crop_rgb))
        for points in run.batches(crop):
            check_budget(deadline, None)
            await _step(lane, namespace, run.process_batch, crop, crop_features, points)
        run.finish_crop(crop)
    check_budget(deadline, None)
    masks = await _step(lane, namespace, run.finish)
    result = to_response(masks, request.format, request.polygon_holes)
    if isinstance(result, EverythingResponse):
        result.time = time.perf_counter() - started
    return result


def _as_is(runtime: Any, features: Any) -> Features:
    return features


async def _step(lane: Lane, tenant: str, fn: Callable[..., T], *args: object) -> T:
    """One job on `lane` (queued under `tenant`) whose caller's cancellation stands.

    `Lane.run` lets a running job finish and takes its caller's cancellation back (an
    embedding is worth caching for the next caller); a batch of a segment-everything whose
    caller has gone is worth nothing, so here the caller stops at once: the job is
    cancelled in the lane (dropped if still waiting, else it finishes there, unread).
    """
    job = asyncio.ensure_future(lane.run(fn, *args, tenant=tenant))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        job.cancel()
        job.add_done_callback(_ignore_result)
        raise


def _ignore_result(job: asyncio.Future) -> None:
    if not job.cancelled():
        job.exception()  # retrieved: no "never retrieved" warning for a dropped batch


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
