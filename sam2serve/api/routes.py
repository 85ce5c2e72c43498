"""HTTP routes: parse, call the service, serialize. No model code here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sam2serve import __version__
from sam2serve.api.body import parse_request
from sam2serve.api.requests import EmbedRequest, Limits, SegmentRequest
from sam2serve.api.responses import EmbedResponse, SegmentResponse
from sam2serve.memory import rss_bytes
from sam2serve.runtime.weights import checkpoint_path
from sam2serve.service import BinaryResult, Sam2Service

router = APIRouter()


def _service(request: Request) -> Sam2Service:
    return request.app.state.service


def _body_schema(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


@router.post(
    "/sam2/embed_image",
    response_model=EmbedResponse,
    openapi_extra=_body_schema(EmbedRequest),
    summary="Embed an image once; later clicks reuse it by image_id",
)
async def embed_image(request: Request) -> EmbedResponse:
    service = _service(request)
    body, namespace = await parse_request(request, EmbedRequest, service.settings, {})
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
    body, namespace = await parse_request(request, SegmentRequest, s, {"limits": limits})
    result = await service.segment(body, namespace)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))


@router.get("/healthz", summary="Process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Ready to serve (503 while loading or draining)")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    if state.draining:
        return JSONResponse({"status": "draining", "message": "shutting down"}, status_code=503)
    if state.preloading:
        detail = getattr(state, "preload_detail", None) or "loading the default model"
        status = "preparing" if detail.startswith("first use") else "loading"
        return JSONResponse({"status": status, "message": detail}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/info", summary="Version, device, models and cache use")
async def info(request: Request) -> dict[str, Any]:
    service = _service(request)
    cache = service.cache
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
        },
        "auth": bool(service.settings.api_keys),
        "rss_bytes": rss_bytes(),
    }


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    cache = _service(request).cache
    m.cache_bytes.set(cache.bytes_used)
    m.cache_entries.set(len(cache))
    m.cache_hits.set(cache.hits)
    m.cache_misses.set(cache.misses)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
