"""Label Studio ML backend routes, under /label-studio: Label Studio calls `<url>/health`,
`<url>/setup`, `<url>/predict`, `<url>/webhook`, so its connect URL is
`http://<sam2serve host>:<port>/label-studio`.

Auth: with API keys configured, the key as the password of HTTP Basic auth (Label Studio's
"Basic Authentication" on the model connection; any user name), or as on every route.
/webhook is open: Label Studio sends its webhooks without credentials, and it does nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sam2serve.api.auth import label_studio_namespace
from sam2serve.api.body import parse_json, read_capped
from sam2serve.errors import SchemaError
from sam2serve.label_studio.service import LabelStudioBackend

PREFIX = "/label-studio"
router = APIRouter(prefix=PREFIX, tags=["Label Studio ML backend"])
#: /setup bodies: a labeling config
SMALL_BODY = 4 * 1024 * 1024


def _backend(request: Request) -> LabelStudioBackend:
    return request.app.state.services.label_studio


async def _json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    data = parse_json(await read_capped(request, max_bytes))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SchemaError("body must be a JSON object", field="body")
    return data


@router.get("/health", summary="Label Studio's health check")
@router.get("/", summary="Label Studio's health check", include_in_schema=False)
async def health(request: Request) -> dict[str, Any]:
    backend = _backend(request)
    label_studio_namespace(backend.settings.api_keys, request)
    return backend.health()


@router.post("/setup", summary="Label Studio's connect call: the model version (no model load)")
async def setup(request: Request) -> dict[str, Any]:
    backend = _backend(request)
    label_studio_namespace(backend.settings.api_keys, request)
    return backend.setup(await _json_object(request, SMALL_BODY))


@router.post(
    "/predict",
    summary="Label Studio predictions: interactive masks, SAM 3 pre-labels, video tracks",
    description=(
        "Label Studio's predict call (`tasks`, `label_config`, `params.context.result`). "
        "Answers `{results: [{result, score, model_version}, ...], model_version}`, one "
        "item per task; see docs/label-studio.md."
    ),
)
async def predict(request: Request) -> JSONResponse:
    backend = _backend(request)
    namespace = label_studio_namespace(backend.settings.api_keys, request)
    body = await _json_object(request, backend.settings.max_body_bytes)
    return JSONResponse(await backend.predict(body, namespace))


@router.post("/webhook", summary="Label Studio's webhooks: accepted and ignored")
async def webhook(request: Request) -> dict[str, str]:
    async for _ in request.stream():  # read and dropped: nothing is kept, whatever its size
        pass
    return {"status": "ignored"}


@router.get("/versions", summary="Label Studio's model versions")
@router.post("/versions", include_in_schema=False)
async def versions(request: Request) -> dict[str, Any]:
    backend = _backend(request)
    label_studio_namespace(backend.settings.api_keys, request)
    return {"versions": [backend.model_version()]}
