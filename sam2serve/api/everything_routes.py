"""HTTP route of segment-everything: parse, call the service, serialize.

A request that carries an image takes an image admission slot before its body is parsed,
as segment_image does. A client that disconnects has its route cancelled by the request
guard, which stops the remaining batches.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sam2serve.api.admission import SMALL_BODY_BYTES, ImageAdmission, declared_length
from sam2serve.api.affinity import OPENAPI_PARAMETER, check_image_id_header
from sam2serve.api.auth import early_namespace
from sam2serve.api.body import parse_request
from sam2serve.everything.schema import EverythingRequest, EverythingResponse
from sam2serve.wire import BinaryResult
from sam2serve.wiring import Services

router = APIRouter()


@router.post(
    "/sam2/segment_everything",
    response_model=EverythingResponse,
    openapi_extra={
        "parameters": [OPENAPI_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": EverythingRequest.model_json_schema()}},
        },
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
    services: Services = request.app.state.services
    service = services.images
    admission: ImageAdmission = request.app.state.admission
    early = early_namespace(service.settings.api_keys, request)
    async with admission.ticket(request, service.settings.max_body_bytes) as ticket:
        if declared_length(request) > SMALL_BODY_BYTES:  # it carries an image
            await ticket.take(body_read=False, namespace=early)
        body, namespace = await parse_request(request, EverythingRequest, service.settings, {})
        check_image_id_header(request, body.image_id)
        if body.image is not None:
            await ticket.take(body_read=True, namespace=namespace)
        result = await services.everything.segment(body, namespace)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))
