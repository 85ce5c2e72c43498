"""Reading a JSON body: size cap, JSON parse, auth, then schema validation, in that order."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sam2serve.api.auth import namespace_for, presented_key
from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge, SchemaError
from sam2serve.schema import schema_error

M = TypeVar("M", bound=BaseModel)


async def read_capped(request: Request, max_bytes: int) -> bytes:
    too_big = PayloadTooLarge(
        f"request body is over {max_bytes} bytes: send a smaller image (or an https URL), "
        "or raise SAM2SERVE_MAX_BODY_BYTES",
        field="body",
    )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_request(
    request: Request, model: type[M], settings: Settings, context: dict[str, Any]
) -> tuple[M, str]:
    """Return (validated request, cache namespace of the caller)."""
    raw = await read_capped(request, settings.max_body_bytes)
    try:
        data = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f"body is not valid JSON ({exc.__class__.__name__}); send Content-Type: "
            "application/json",
            field="body",
        ) from exc
    namespace = namespace_for(settings.api_keys, presented_key(request, data))
    if not isinstance(data, dict):
        raise SchemaError("body must be a JSON object", field="body")
    try:
        return model.model_validate(data, context=context), namespace
    except ValidationError as exc:
        raise schema_error(exc) from exc
