"""HTTP route of segment-everything: parse, call the service, serialize."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sam2serve.api.body import parse_request
from sam2serve.everything_schema import EverythingRequest, EverythingResponse
from sam2serve.everything_service import Stopped, segment_everything
from sam2serve.service import BinaryResult, Sam2Service

router = APIRouter()

CLIENT_CLOSED = 499  # nobody reads it: the client is gone


@router.post(
    "/sam2/segment_everything",
    response_model=EverythingResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EverythingRequest.model_json_schema()}},
        }
    },
    responses={
        200: {"content": {"application/octet-stream": {}}},
        413: {"description": "over the server's budget of grid points or candidate masks"},
        503: {"description": "over the server's time budget, or busy"},
    },
    summary="Every object as a mask, from a grid of point prompts (Meta's automatic "
    "mask generator parameters); format json | rle | binary",
)
async def segment_everything_route(request: Request) -> Response:
    service: Sam2Service = request.app.state.service
    body, namespace = await parse_request(request, EverythingRequest, service.settings, {})
    try:
        result = await segment_everything(service, body, namespace, request.is_disconnected)
    except Stopped:
        return Response(status_code=CLIENT_CLOSED)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))
