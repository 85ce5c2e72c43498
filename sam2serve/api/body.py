"""Reading a JSON body: size cap, JSON parse, auth, then schema validation, in that order."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sam2serve.api.auth import namespace_for, presented_key
from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge, ServiceError

M = TypeVar("M", bound=BaseModel)


class SchemaError(ServiceError):
    """422: the JSON does not match the request schema."""

    status = 422


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


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def schema_error(exc: ValidationError) -> SchemaError:
    first = exc.errors(include_url=False)[0]
    where = _where(tuple(p for p in first["loc"] if p not in ("function-after",)))
    message = first["msg"].removeprefix("Value error, ")
    return SchemaError(f"{where}: {message}", field=where, errors=len(exc.errors()))


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
