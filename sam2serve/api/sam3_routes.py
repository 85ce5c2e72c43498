"""HTTP routes of SAM 3 (Roboflow's `/sam3/*` paths): parse, call the service, serialize.

Requests that carry an image are admitted against the embed lane before their body is read,
as `/sam2/segment_image`; the caps come from `SAM2SERVE_SAM3_*` (`sam3.config`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sam2serve.api.admission import SMALL_BODY_BYTES, ImageAdmission, declared_length
from sam2serve.api.affinity import OPENAPI_PARAMETER, check_image_id_header
from sam2serve.api.auth import early_namespace
from sam2serve.api.body import parse_request
from sam2serve.api.openapi import EXAMPLE_PNG_BASE64
from sam2serve.everything.schema import EverythingResponse
from sam2serve.image.schema import SegmentResponse
from sam2serve.sam3.schema import (
    ConceptSegmentRequest,
    ConceptSegmentResponse,
    Sam3EmbedRequest,
    Sam3EmbedResponse,
    Sam3EverythingRequest,
    VisualSegmentRequest,
    examples,
)
from sam2serve.sam3.service import Sam3Service
from sam2serve.wire import BinaryResult, Limits
from sam2serve.wiring import Services

router = APIRouter()
EXAMPLE_IMAGE = {"type": "base64", "value": EXAMPLE_PNG_BASE64}


def _services(request: Request) -> Services:
    return request.app.state.services


def _body(model: type, body_examples: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": model.model_json_schema()}
    if body_examples:
        media["examples"] = body_examples
    return {
        "parameters": [OPENAPI_PARAMETER],
        "requestBody": {"required": True, "content": {"application/json": media}},
    }


@router.post(
    "/sam3/embed_image",
    response_model=Sam3EmbedResponse,
    openapi_extra=_body(Sam3EmbedRequest),
    summary="SAM 3: embed an image once; later concept_segment calls reuse it by image_id",
)
async def sam3_embed_image(request: Request) -> Sam3EmbedResponse:
    services = _services(request)
    settings = services.settings
    admission: ImageAdmission = request.app.state.admission
    early = early_namespace(settings.api_keys, request)
    async with admission.ticket(request, settings.max_body_bytes) as ticket:
        await ticket.take(body_read=False, namespace=early)
        context = {"sam3_limits": services.sam3.limits}
        body, namespace = await parse_request(request, Sam3EmbedRequest, settings, context)
        check_image_id_header(request, body.image_id)
        ticket.charge(namespace)
        return await services.sam3.embed(body, namespace)


@router.post(
    "/sam3/concept_segment",
    response_model=ConceptSegmentResponse,
    openapi_extra=_body(ConceptSegmentRequest, examples(EXAMPLE_IMAGE)),
    responses={
        413: {"description": "one mask of this image is over the output-mask budget"},
    },
    summary="SAM 3: every instance of a concept (noun phrase and/or exemplar boxes)",
    description=(
        "Each prompt is a short noun phrase (`text`), exemplar boxes (`boxes` + `box_labels`: "
        "1 = like this, 0 = not like this), or both; every matching instance comes back with "
        "its mask and score (sigmoid(logit) x presence, as Meta's Sam3Processor). Instances "
        "are answered best first, those over `output_prob_thresh` (per prompt, or the "
        "request's); `nms_iou_threshold` drops overlapping instances across prompts. At most "
        "SAM2SERVE_SAM3_MAX_INSTANCES_PER_PROMPT per prompt and SAM2SERVE_MAX_MASK_PIXELS "
        "mask pixels per request: `found` and `note` say when that cut the answer."
    ),
)
async def sam3_concept_segment(request: Request) -> Response:
    services = _services(request)
    result = await _with_image(request, services, ConceptSegmentRequest, _concept)
    return JSONResponse(result.model_dump(mode="json"))


@router.post(
    "/sam3/visual_segment",
    response_model=SegmentResponse,
    openapi_extra=_body(VisualSegmentRequest),
    responses={200: {"content": {"application/octet-stream": {}}}},
    summary="SAM 3: masks for point/box prompts (SAM 2's segment_image body and answer)",
    description=(
        "SAM 3's instance-interactive predictor (Meta's predict_inst): one mask per prompt, "
        "`prompts`, `multimask_output`, `mask_input`, the logits cache and `format` as "
        "/sam2/segment_image; `model_id` picks the SAM 3 model."
    ),
)
async def sam3_visual_segment(request: Request) -> Response:
    services = _services(request)
    result = await _with_image(request, services, VisualSegmentRequest, _visual)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))


async def _visual(service: Sam3Service, body: VisualSegmentRequest, namespace: str) -> Any:
    return await service.visual_segment(body, namespace)


@router.post(
    "/sam3/segment_everything",
    response_model=EverythingResponse,
    openapi_extra=_body(Sam3EverythingRequest),
    responses={
        200: {"content": {"application/octet-stream": {}}},
        413: {"description": "over the server's budget of grid points or candidate masks"},
        503: {"description": "over the server's time budget, or busy"},
    },
    summary="SAM 3: every object as a mask (Meta's automatic mask generator parameters on "
    "SAM 3's instance predictor); format json | rle | binary",
)
async def sam3_segment_everything(request: Request) -> Response:
    services = _services(request)
    result = await _with_image(request, services, Sam3EverythingRequest, _everything)
    if isinstance(result, BinaryResult):
        return Response(content=result.content, media_type=result.media_type)
    return JSONResponse(result.model_dump(mode="json"))


async def _everything(service: Sam3Service, body: Sam3EverythingRequest, namespace: str) -> Any:
    return await service.segment_everything(body, namespace)


async def _concept(service: Sam3Service, body: ConceptSegmentRequest, namespace: str) -> Any:
    return await service.concept_segment(body, namespace)


async def _with_image(request: Request, services: Services, model: type, call: Any) -> Any:
    """Admit, parse (SAM 3 caps), check the affinity header, call the service."""
    settings = services.settings
    admission: ImageAdmission = request.app.state.admission
    early = early_namespace(settings.api_keys, request)
    async with admission.ticket(request, settings.max_body_bytes) as ticket:
        if declared_length(request) > SMALL_BODY_BYTES:  # it carries an image
            await ticket.take(body_read=False, namespace=early)
        s = settings
        limits = Limits(s.max_prompts, s.max_points_per_prompt, s.max_coordinate)
        context = {"sam3_limits": services.sam3.limits, "limits": limits}
        body, namespace = await parse_request(request, model, settings, context)
        check_image_id_header(request, body.image_id)
        if body.image is not None:
            await ticket.take(body_read=True, namespace=namespace)
        return await call(services.sam3, body, namespace)
