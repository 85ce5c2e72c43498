"""HTTP routes of video sessions: parse, call `VideoService`, serialize (NDJSON streams)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from sam2serve.api.admission import discard_body
from sam2serve.api.auth import namespace_for, presented_key
from sam2serve.api.body import parse_request
from sam2serve.errors import BadRequest, ServiceError
from sam2serve.video.schema import (
    CreateSessionRequest,
    FrameResult,
    MaskFormat,
    PromptRequest,
    PropagateRequest,
    SessionInfo,
)
from sam2serve.video.service import VideoService, clip_too_large

log = logging.getLogger(__name__)
router = APIRouter(prefix="/sam2/video", tags=["video"])
SESSION = "/sessions/{session_id}"


def video_service(request: Request) -> VideoService:
    """The app's video service (built with the others by `wiring.build_services`)."""
    return request.app.state.services.video


def _namespace(request: Request) -> str:
    settings = request.app.state.services.settings
    return namespace_for(settings.api_keys, presented_key(request, None))


def _body(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _capped_receive(request: Request, cap: int) -> Any:
    """The request's receive channel, raising 413 once more than `cap` bytes arrived."""
    seen = 0

    async def receive() -> Any:
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > cap:
            raise clip_too_large(cap)
        return message

    return receive


@router.post(
    "/sessions",
    response_model=SessionInfo,
    summary="Open a session on a clip: multipart `video`, raw video body, or JSON url/frames",
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "video": {"type": "string", "format": "binary"},
                            "sam2_version_id": {"type": "string"},
                        },
                        "required": ["video"],
                    }
                },
                "application/json": {"schema": CreateSessionRequest.model_json_schema()},
            }
        }
    },
)
async def create_session(request: Request) -> SessionInfo:
    video = video_service(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        body, namespace = await parse_request(
            request, CreateSessionRequest, video.images.settings, {}
        )
        return await video.create(body, namespace)
    namespace = _namespace(request)
    cap = video.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise clip_too_large(cap)
    try:
        video.admit(namespace)  # over a session cap: refused before the upload is stored
    except ServiceError:
        await discard_body(request, cap)  # so the client reads the answer, not a reset
        raise
    model = request.query_params.get("sam2_version_id")
    with tempfile.TemporaryDirectory(prefix="sam2-video-up-") as tmp:
        clip = Path(tmp) / "upload"
        if kind == "multipart/form-data":
            capped = StarletteRequest(request.scope, receive=_capped_receive(request, cap))
            async with capped.form(max_files=1, max_fields=8) as form:
                upload = form.get("video")
                if not isinstance(upload, UploadFile):
                    raise BadRequest(
                        "multipart body has no `video` file part: send the clip as `video`",
                        field="video",
                    )
                with clip.open("wb") as out:
                    shutil.copyfileobj(upload.file, out, 1 << 20)
                model = str(form.get("sam2_version_id") or "") or model
        elif kind.startswith("video/") or kind == "application/octet-stream":
            size = 0
            with clip.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > cap:
                        raise clip_too_large(cap)
                    out.write(chunk)
        else:
            raise BadRequest(
                f"Content-Type {kind or 'none'} is not accepted: upload multipart/form-data with "
                "a `video` part, a raw video/* body, or JSON with `url` or `frames`",
                field="content-type",
            )
        return await video.create_from_file(clip, namespace, model)


@router.delete(SESSION, status_code=204, summary="Close a session and free its memory")
async def delete_session(request: Request, session_id: str) -> Response:
    video_service(request).delete(_namespace(request), session_id)
    return Response(status_code=204)


@router.post(
    SESSION + "/prompts",
    response_model=FrameResult,
    openapi_extra=_body(PromptRequest),
    summary="Add or refine an object on a frame; returns that frame's masks for all objects",
)
async def add_prompt(request: Request, session_id: str) -> FrameResult:
    video = video_service(request)
    body, namespace = await parse_request(request, PromptRequest, video.images.settings, {})
    return await video.add_prompt(namespace, session_id, body)


@router.post(
    SESSION + "/propagate",
    openapi_extra=_body(PropagateRequest),
    responses={200: {"content": {"application/x-ndjson": {}}}},
    summary="Track all objects through the clip; NDJSON, one FrameResult line per frame",
)
async def propagate(request: Request, session_id: str) -> StreamingResponse:
    video = video_service(request)
    body, namespace = await parse_request(request, PropagateRequest, video.images.settings, {})
    frames = await video.propagate(namespace, session_id, body)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for frame in frames:
                yield (frame.model_dump_json() + "\n").encode()
        except ServiceError as exc:  # mid-stream: the status is sent, report it in-band
            yield (json.dumps({"error": exc.to_dict()}) + "\n").encode()
        except Exception:  # a bug: log it, end the stream with a generic error line
            log.exception("video propagation failed")
            message = "internal server error; the server log has the details"
            yield (json.dumps({"error": {"message": message}}) + "\n").encode()
        finally:
            await frames.aclose()  # a client disconnect lands here: stop the remaining work

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get(
    SESSION + "/frames/{frame_index}",
    response_model=FrameResult,
    summary="The current masks of a frame (from prompts and propagations so far)",
)
async def read_frame(
    request: Request, session_id: str, frame_index: int, format: MaskFormat = "rle"
) -> FrameResult:
    return video_service(request).frame(_namespace(request), session_id, frame_index, format)


@router.delete(SESSION + "/objects/{object_id}", status_code=204, summary="Remove an object")
async def remove_object(request: Request, session_id: str, object_id: int) -> Response:
    await video_service(request).remove_object(_namespace(request), session_id, object_id)
    return Response(status_code=204)


@router.post(SESSION + "/reset", status_code=204, summary="Remove all objects and prompts")
async def reset(request: Request, session_id: str) -> Response:
    await video_service(request).reset(_namespace(request), session_id)
    return Response(status_code=204)


@router.get(
    "/info",
    summary="Open video sessions and their memory",
    description="With API keys configured, a valid key is needed (as for /info's figures).",
)
async def video_info(request: Request) -> JSONResponse:
    _namespace(request)  # 401 without a valid key, when keys are configured
    return JSONResponse(video_service(request).describe())
