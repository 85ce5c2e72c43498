"""API keys: from the body's `api_key`, the `api_key` query parameter, or a Bearer header;
on the Label Studio backend routes also as the password of HTTP Basic auth (all Label Studio
can send to an ML backend).

Keys are compared in constant time and never logged; each key gets its own cache namespace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

from fastapi import Request
from pydantic import SecretStr

from sam2serve.errors import Unauthorized
from sam2serve.wiring import PUBLIC_NAMESPACE


def presented_key(request: Request, body: Any) -> str | None:
    if isinstance(body, dict) and isinstance(body.get("api_key"), str) and body["api_key"]:
        return body["api_key"]
    if request.query_params.get("api_key"):
        return request.query_params["api_key"]
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def namespace_for(keys: list[SecretStr], presented: str | None) -> str:
    """The cache namespace of this caller; raises 401 when keys are configured and the
    presented key is missing or matches none of them."""
    if not keys:
        return PUBLIC_NAMESPACE
    if presented is None:
        raise Unauthorized(
            "an API key is required: send it as `api_key` in the body or query string, "
            "or as `Authorization: Bearer <key>`",
            field="api_key",
        )
    given = presented.encode("utf-8", "surrogatepass")  # lone surrogates are valid JSON
    matched = False
    for key in keys:  # no early exit: time does not depend on which key matched
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not matched:
        raise Unauthorized(
            "the api_key is not valid for this server: check the key you were given",
            field="api_key",
        )
    return "key:" + hashlib.sha256(given).hexdigest()[:24]


def early_namespace(keys: list[SecretStr], request: Request) -> str | None:
    """The namespace of a valid key given outside the body (query string or Bearer header),
    known before the body is read; None when there is none (the key may be in the body) or
    it is not valid (the full check after parsing answers the 401)."""
    presented = presented_key(request, None)
    if presented is None:
        return None
    try:
        return namespace_for(keys, presented)
    except Unauthorized:
        return None


def basic_password(request: Request) -> str | None:
    """The password of an `Authorization: Basic` header (the user name is not checked), or
    None when there is none or it does not decode."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


def label_studio_namespace(keys: list[SecretStr], request: Request) -> str:
    """The namespace of a Label Studio backend call: a key as Basic auth password (or as on
    every route); 401 telling the admin where Label Studio takes it."""
    presented = presented_key(request, None) or basic_password(request)
    try:
        return namespace_for(keys, presented)
    except Unauthorized as exc:
        what = "is not valid for this server" if presented else "is required"
        raise Unauthorized(
            f"an API key {what}: in Label Studio's model connection turn on 'Use Basic "
            "Authentication', any user name, the API key as the password",
            field="authorization",
        ) from exc
