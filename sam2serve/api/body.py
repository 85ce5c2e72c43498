"""Reading a JSON body: size cap, JSON parse, auth, then schema validation, in that order."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError

from sam2serve.api.auth import namespace_for, presented_key
from sam2serve.config import Settings
from sam2serve.errors import BadRequest, PayloadTooLarge, SchemaError
from sam2serve.wire import schema_error

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


#: bodies larger than this are parsed and validated in a worker thread, off the event loop
OFF_LOOP_BYTES = 256 * 1024


def parse_json(raw: bytes) -> Any:
    """JSON -> Python. Bad UTF-8, integers over 4300 digits and nesting beyond the
    interpreter's recursion limit are a 400 naming the problem, never a 500 (NaN and
    Infinity parse; the schema refuses them where a number must be finite)."""
    try:
        return json.loads(raw) if raw else None
    except RecursionError as exc:
        raise BadRequest(
            "body is not usable JSON: it is nested too deeply; the request schema needs at "
            "most a few levels",
            field="body",
        ) from exc
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON: it is not UTF-8 (byte {exc.start}); send UTF-8 JSON "
            "with Content-Type: application/json",
            field="body",
        ) from exc
    except ValueError as exc:  # JSONDecodeError, too many digits
        raise BadRequest(
            f"body is not valid JSON ({_short(exc)}); send Content-Type: application/json",
            field="body",
        ) from exc


def _short(exc: Exception) -> str:
    if "integer string conversion" in str(exc):
        return "a number has more than 4300 digits"
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    return text[:200]


def validate_body(data: Any, model: type[M], context: dict[str, Any]) -> M:
    if not isinstance(data, dict):
        raise SchemaError("body must be a JSON object", field="body")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise schema_error(exc) from exc
    except RecursionError as exc:
        raise SchemaError("body is nested too deeply for the request schema", field="body") from exc


async def parse_request(
    request: Request, model: type[M], settings: Settings, context: dict[str, Any]
) -> tuple[M, str]:
    """Return (validated request, cache namespace of the caller).

    Large bodies are parsed in a worker thread so the event loop (health checks, clicks)
    keeps answering while they are read.
    """
    raw = await read_capped(request, settings.max_body_bytes)
    if len(raw) > OFF_LOOP_BYTES:
        data = await anyio.to_thread.run_sync(parse_json, raw)
    else:
        data = parse_json(raw)
    namespace = namespace_for(settings.api_keys, presented_key(request, data))
    if len(raw) > OFF_LOOP_BYTES:
        return await anyio.to_thread.run_sync(validate_body, data, model, context), namespace
    return validate_body(data, model, context), namespace
