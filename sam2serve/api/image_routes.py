"""HTTP routes: parse, call the service, serialize. No model code here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sam2serve import __version__
from sam2serve.api.admission import (
    SMALL_BODY_BYTES,
    AdmissionTicket,
    ImageAdmission,
    declared_length,
)
from sam2serve.api.affinity import OPENAPI_PARAMETER, check_image_id_header
from sam2serve.api.auth import early_namespace, namespace_for, presented_key
from sam2serve.api.body import parse_request
from sam2serve.api.readiness import default_model_problem, start_preload
from sam2serve.errors import Unauthorized
from sam2serve.image.schema import (
    EmbedRequest,
    EmbedResponse,
    Limits,
    SegmentRequest,
    SegmentResponse,
)
from sam2serve.image.service import ImageService
from sam2serve.runtime.memory import rss_bytes
from sam2serve.runtime.weights import checkpoint_path
from sam2serve.wire import BinaryResult

router = APIRouter()


def _service(request: Request) -> ImageService:
    return request.app.state.services.images


def _admission(request: Request) -> AdmissionTicket:
    admission: ImageAdmission = request.app.state.admission
    return admission.ticket(request, _service(request).settings.max_body_bytes)


def _body_schema(model: type) -> dict[str, Any]:
    return {
        "parameters": [OPENAPI_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }


@router.post(
    "/sam2/embed_image",
    response_model=EmbedResponse,
    openapi_extra=_body_schema(EmbedRequest),
    summary="Embed an image once; later clicks reuse it by image_id",
)
async def embed_image(request: Request) -> EmbedResponse:
    service = _service(request)
    early = early_namespace(service.settings.api_keys, request)
    async with _admission(request) as ticket:
        # refused before the body is parsed or decoded (also when over the key's share)
        await ticket.take(body_read=False, namespace=early)
        body, namespace = await parse_request(request, EmbedRequest, service.settings, {})
        check_image_id_header(request, body.image_id)
        ticket.charge(namespace)  # a key given in the body
        return await service.embed(body, namespace)


@router.post(
    "/sam2/segment_image",
    response_model=SegmentResponse,
    openapi_extra=_body_schema(SegmentRequest),
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="Masks for point/box prompts (format json | rle | binary)",
)
async def segment_image(request: Request) -> Response:
    service = _service(request)
    s = service.settings
    limits = Limits(s.max_prompts, s.max_points_per_prompt, s.max_coordinate)
    early = early_namespace(s.api_keys, request)
    async with _admission(request) as ticket:
        if declared_length(request) > SMALL_BODY_BYTES:  # it carries an image
            await ticket.take(body_read=False, namespace=early)
        body, namespace = await parse_request(request, SegmentRequest, s, {"limits": limits})
        check_image_id_header(request, body.image_id)
        if body.image is not None:
            await ticket.take(body_read=True, namespace=namespace)
        result = await service.segment(body, namespace)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/healthz", summary="Process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Ready to serve (503 while loading or draining, or while the default model's "
    "weights are missing)",
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    if state.draining:
        return JSONResponse({"status": "draining", "message": "shutting down"}, status_code=503)
    service = _service(request)
    problem, changed = default_model_problem(service, state.load_failure)
    if changed and service.settings.preload and not state.preloading:
        start_preload(request.app)  # the weights changed since the failure: load again
    if state.preloading:
        detail = getattr(state, "preload_detail", None) or "loading the default model"
        status = "preparing" if detail.startswith("first use") else "loading"
        return JSONResponse({"status": status, "message": detail}, status_code=503)
    if problem is not None:  # every segment request would get a 503: not ready
        return JSONResponse(problem, status_code=503)
    shared = service.store.shared
    if shared is None:
        return JSONResponse({"status": "ready"})
    await shared.probe()  # down: still ready, local-only; the detail says so
    status = shared.status()  # the public part: Redis address and counts are in /info
    detail = {name: status[name] for name in ("enabled", "state", "down_since")}
    return JSONResponse({"status": "ready", "shared_tier": detail})


@router.get(
    "/info",
    summary="Version, device, models and cache use",
    description=(
        "With API keys configured, a caller without a valid key gets only the public part "
        "(version, models, aliases, auth, replica); device, runtimes, cache, shared tier and "
        "memory figures need a key."
    ),
)
async def info(request: Request) -> dict[str, Any]:
    service = _service(request)
    body = _info(service)
    body["replica"] = request.app.state.replica  # as in every answer's X-Sam2serve-Replica
    body["video"] = request.app.state.services.video.describe()
    body["sam3"] = request.app.state.services.sam3.describe()
    if not _has_valid_key(request, service):
        for private in _PRIVATE_INFO:
            body.pop(private, None)
        for figures in ("text_cache", "concept_cache"):  # cache figures need a key
            body["sam3"].pop(figures, None)
        body["detail"] = (
            "send an API key for device, runtime, cache, shared tier and memory figures"
        )
    return body


#: /info fields only a caller with a valid key sees (when keys are configured)
_PRIVATE_INFO = (
    "device",
    "runtime",
    "loaded_models",
    "runtimes",
    "cache",
    "shared_tier",
    "rss_bytes",
    "video",
)


def _has_valid_key(request: Request, service: ImageService) -> bool:
    """True when no keys are configured, or the request presents a valid one."""
    try:
        namespace_for(service.settings.api_keys, presented_key(request, None))
    except Unauthorized:
        return False
    return True


def _images_fit(service: ImageService) -> dict[str, dict[str, int]]:
    """Per model: bytes of one image's features and how many images fit the cache budget
    (measured on the images embedded so far, else as the loaded runtime declares)."""
    cache = service.store.local
    fit = cache.images_fit()
    for model_id in service.pool.loaded:
        size = getattr(service.pool.loaded_runtime(model_id), "feature_nbytes", None)
        if model_id not in fit and isinstance(size, int) and size > 0:  # SAM 3 declares it
            fit[model_id] = {"bytes_per_image": size, "images": cache.max_bytes // size}
    return fit


def _info(service: ImageService) -> dict[str, Any]:
    cache = service.store.local
    return {
        "version": __version__,
        "device": str(service.pool.device),
        "default_model": service.spec_for(None).model_id,
        "runtime": service.settings.runtime,
        "loaded_models": service.pool.loaded,
        "runtimes": service.pool.describe(),
        "models": [
            {
                "id": spec.model_id,
                "family": spec.family,
                "size_mb": spec.size_mb,
                "present": checkpoint_path(spec, service.pool.weights_dir).is_file(),
                "loaded": spec.model_id in service.pool.loaded,
            }
            for spec in service.registry.values()
        ],
        "aliases": {
            alias: service.spec_for(alias).model_id
            for alias in ("hiera_tiny", "hiera_small", "hiera_b_plus", "hiera_large")
        },
        "cache": {
            "entries": len(cache),
            "bytes": cache.bytes_used,
            "max_bytes": cache.max_bytes,
            "hits": cache.hits,
            "misses": cache.misses,
            "evictions": cache.evictions,
            "per_model": _images_fit(service),
        },
        "auth": bool(service.settings.api_keys),
        "shared_tier": service.store.shared.status()
        if service.store.shared
        else {"enabled": False},
        "rss_bytes": rss_bytes(),
    }


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    service = _service(request)
    if service.settings.metrics_require_key:
        namespace_for(service.settings.api_keys, presented_key(request, None))  # or 401
    m = request.app.state.metrics
    cache = service.store.local
    m.cache_bytes.set(cache.bytes_used)
    m.cache_entries.set(len(cache))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
