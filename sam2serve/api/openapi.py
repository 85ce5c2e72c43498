"""The OpenAPI document: valid (every `$ref` resolves) and complete (errors, examples, text).

FastAPI documents the request bodies of our routes from `openapi_extra` (the routes parse
their own bodies, so errors come in our order: size, JSON, key, schema). Those schemas
carry their own `$defs`, which do not resolve inside an OpenAPI document; this module
moves them into `components/schemas`, adds a description to every request field that has
none and an example per request, documents the JSON error answers (400, 401, 404, 409,
413, 422, 429, 500, 503) and /metrics as Prometheus text.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

REF_PREFIX = "#/components/schemas/"

#: a 32x32 PNG (white square on black), small enough to serve as a working example
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAMUlEQVR42mNgGAWjYBQw4pL4//8/aQYxYjeKidY+"
    "GLVg1IJRC0YtGLVgFIyCUUAdAADGHQMgK35pdQAAAABJRU5ErkJggg=="
)

#: descriptions of request fields, where the model itself has none
FIELD_DOCS: dict[str, dict[str, str]] = {
    "EmbedRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image to embed",
        "image_id": "name for the image in later segment_image calls (default: its hash)",
        "sam2_version_id": "model id or Roboflow alias (default: the server's model)",
    },
    "SegmentRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image; omit it to use `image_id` of an embedded image",
        "image_id": "id from embed_image (or the name to give `image`)",
        "sam2_version_id": "model id or Roboflow alias (default: the server's model)",
        "multimask_output": "let the model pick the best of 3 masks per prompt",
        "save_logits_to_cache": "keep each prompt's low-res logits for refinement",
        "load_logits_from_cache": "start from the logits saved for the same prompts",
        "format": "json: polygons; rle: COCO RLE; binary: an .npz of logits",
    },
    "EverythingRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image; omit it to use `image_id` of an embedded image",
        "sam2_version_id": "model id or Roboflow alias (default: the server's model)",
        "format": "json: polygons; rle: COCO RLE; binary: an .npz of masks and records",
    },
    "Sam3EmbedRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image to embed for SAM 3",
        "image_id": "name for the image in later /sam3 calls (default: its hash)",
        "model_id": "a SAM 3 model id, or Roboflow's sam3/sam3_final (default: the server's)",
    },
    "ConceptSegmentRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image; omit it to use `image_id` of an embedded image",
        "image_id": "id from /sam3/embed_image (or the name to give `image`)",
    },
    "VisualSegmentRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image; omit it to use `image_id` of an embedded image",
        "image_id": "id from /sam3/embed_image (or the name to give `image`)",
        "sam2_version_id": "ignored here: SAM 3 models are named by `model_id`",
        "multimask_output": "let the model pick the best of 3 masks per prompt",
        "save_logits_to_cache": "keep each prompt's low-res logits for refinement",
        "load_logits_from_cache": "start from the logits saved for the same prompts",
        "format": "json: polygons; rle: COCO RLE; binary: an .npz of logits",
    },
    "Sam3EverythingRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "image": "the image; omit it to use `image_id` of an embedded image",
        "sam2_version_id": "ignored here: SAM 3 models are named by `model_id`",
        "format": "json: polygons; rle: COCO RLE; binary: an .npz of masks and records",
    },
    "Sam3Prompt": {},
    "BoxXYWH": {
        "x": "left edge in pixels",
        "y": "top edge in pixels",
        "width": "width in pixels",
        "height": "height in pixels",
    },
    "BoxXYXY": {
        "x0": "left edge in pixels",
        "y0": "top edge in pixels",
        "x1": "right edge in pixels",
        "y1": "bottom edge in pixels",
    },
    "ImageInput": {"type": "'base64' or 'url'"},
    "Point": {
        "x": "column in original-image pixels",
        "y": "row in original-image pixels",
        "positive": "true: on the object; false: background",
    },
    "Box": {
        "x": "box centre column in original-image pixels",
        "y": "box centre row in original-image pixels",
        "width": "box width in pixels",
        "height": "box height in pixels",
    },
    "Prompt": {"box": "a box around the object", "points": "clicks on or off the object"},
    "PromptSet": {"prompts": "one prompt per object; one mask each"},
    "CreateSessionRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "sam2_version_id": "model id or Roboflow alias (default: the server's model)",
    },
    "PromptRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "frame_index": "the frame to prompt on (0-based)",
        "object_id": "the object to add or refine (any id you choose)",
        "points": "clicks on or off the object, in frame pixels",
        "box": "a box around the object (centre form)",
        "format": "json: polygons; rle: COCO RLE",
    },
    "PropagateRequest": {
        "api_key": "API key, when the server requires one (also: ?api_key= or a Bearer header)",
        "direction": "forward, backward, or both (forward first, then backward)",
        "max_frames": "stop after this many frames per direction (default: to the clip's end)",
        "format": "json: polygons; rle: COCO RLE",
    },
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "EmbedRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "image_id": "example-square",
    },
    "SegmentRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "prompts": {"prompts": [{"points": [{"x": 16, "y": 16, "positive": True}]}]},
        "format": "rle",
    },
    "EverythingRequest": {  # a 4x4 grid: cheap enough to try
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "points_per_side": 4,
        "format": "rle",
    },
    "Sam3EmbedRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "image_id": "example-square",
    },
    "ConceptSegmentRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "prompts": [{"type": "text", "text": "square"}],
        "output_prob_thresh": 0.5,
    },
    "VisualSegmentRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "prompts": {"prompts": [{"points": [{"x": 16, "y": 16, "positive": True}]}]},
        "format": "rle",
    },
    "Sam3EverythingRequest": {
        "image": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
        "points_per_side": 4,
        "format": "rle",
    },
    "Sam3Prompt": {"type": "text", "text": "square", "output_prob_thresh": 0.4},
    "BoxXYWH": {"x": 8, "y": 8, "width": 16, "height": 16},
    "BoxXYXY": {"x0": 8, "y0": 8, "x1": 24, "y1": 24},
    "ImageInput": {"type": "base64", "value": EXAMPLE_PNG_BASE64},
    "Point": {"x": 16, "y": 16, "positive": True},
    "Box": {"x": 16, "y": 16, "width": 16, "height": 16},
    "Prompt": {"points": [{"x": 16, "y": 16, "positive": True}]},
    "PromptSet": {"prompts": [{"box": {"x": 16, "y": 16, "width": 16, "height": 16}}]},
    "CreateSessionRequest": {
        "frames": [{"type": "base64", "value": EXAMPLE_PNG_BASE64}] * 2,
    },
    "PromptRequest": {
        "frame_index": 0,
        "object_id": 1,
        "points": [{"x": 16, "y": 16, "positive": True}],
        "format": "rle",
    },
    "PropagateRequest": {"direction": "forward", "format": "rle"},
}

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "description": "Every error answer: a message that says how to fix the request.",
    "properties": {
        "message": {"type": "string", "description": "what is wrong and how to fix it"},
        "field": {"type": "string", "description": "the request field at fault, if one is"},
        "request_id": {"type": "string", "description": "500 only: id in the server log"},
    },
    "required": ["message"],
    "additionalProperties": True,
}

_ERRORS: dict[str, str] = {
    "400": "The body is not JSON, or its content cannot be used (bad image, bad base64).",
    "401": "An API key is required and was missing or wrong.",
    "404": "The image_id is not in the cache (never embedded, or evicted): send the image; "
    "or the video session (or object) is unknown or expired.",
    "409": "The video session is busy with another request (a propagation): retry after it.",
    "413": "The body, download or image is over a configured cap.",
    "422": "The JSON does not match the request schema.",
    "429": "This API key is over its own share (images in flight, video sessions; with a "
    "Retry-After header, in seconds); other keys are still served.",
    "500": "A server bug; the answer names a request id to find in the server log.",
    "503": "Busy (with a Retry-After header, in seconds), model weights missing, or the "
    "embedding does not fit the cache budget.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (when the server is busy)",
        "schema": {"type": "string"},
    }
}


def install(app: FastAPI) -> None:
    """Serve the corrected document at the app's /openapi.json (and /docs)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            _hoist_request_body(op, schemas)
            _document_errors(path, method, op)
    for name, schema in schemas.items():
        _describe(name, schema)
    return doc


def _hoist_request_body(op: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Move an inline body schema and its $defs into components/schemas."""
    media = op.get("requestBody", {}).get("content", {}).get("application/json")
    if not media or "schema" not in media or "$ref" in media["schema"]:
        return
    schema = dict(media["schema"])
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, _rewrite_refs(sub))
    name = schema.get("title", "Body")
    schemas[name] = _rewrite_refs(schema)
    media["schema"] = {"$ref": REF_PREFIX + name}
    if name in EXAMPLES:
        media["example"] = EXAMPLES[name]


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite_refs(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = REF_PREFIX + ref.removeprefix("#/$defs/")
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def _describe(name: str, schema: dict[str, Any]) -> None:
    docs = FIELD_DOCS.get(name, {})
    for field, prop in schema.get("properties", {}).items():
        if "description" not in prop and field in docs:
            prop["description"] = docs[field]
    if name in EXAMPLES:
        schema.setdefault("examples", [EXAMPLES[name]])


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF_PREFIX + "Error"}}},
    }
    if retry_after:
        out["headers"] = _RETRY_AFTER
    return out


def _document_errors(path: str, method: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError shape is not what we send
    if path.startswith("/sam2/video/sessions"):
        codes = ["400", "401", "404", "409", "422", "500", "503"]
        if method == "post":
            codes += ["413", "429"]
    elif method == "post":
        codes = ["400", "401", "404", "413", "422", "429", "500", "503"]
    elif path == "/sam2/video/info":
        codes = ["401", "500"]
    elif path == "/metrics":
        codes = ["401", "500"]
        responses["200"] = {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    elif path == "/readyz":
        codes = ["500"]
        responses["503"] = {
            "description": "Not ready: loading the default model, or draining on shutdown",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
                        "required": ["status"],
                    }
                }
            },
        }
    else:
        codes = ["500"]
    for code in codes:  # a route's own description of a code is kept, the rest filled in
        given = responses.setdefault(code, {})
        for key, value in _error(_ERRORS[code], retry_after=code in ("429", "503")).items():
            given.setdefault(key, value)
