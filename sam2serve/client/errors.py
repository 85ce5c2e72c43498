"""Typed errors raised by the SDK (HTTP client and in-process Segmenter alike).

Every server-side failure becomes a `Sam2ServerError` subclass chosen by HTTP status, carrying
the server's own JSON `message` (which names the field and the fix). Failures to reach the
server at all are `Sam2ConnectionError`. Catch `Sam2Error` to catch everything.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = [
    "BadRequestError",
    "ConflictError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Sam2ConnectionError",
    "Sam2Error",
    "Sam2ServerError",
    "Sam2TimeoutError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "UnavailableError",
    "error_for_status",
    "error_from_response",
]


class Sam2Error(Exception):
    """Base class of every error the SDK raises on purpose."""


class Sam2ConnectionError(Sam2Error):
    """The server could not be reached (refused, DNS, TLS, connection dropped)."""


class Sam2TimeoutError(Sam2ConnectionError):
    """The server did not answer within the client's timeout."""


class Sam2ServerError(Sam2Error):
    """The server answered with an error status.

    Attributes:
        status: HTTP status code (400, 401, 404, 413, 422, 503, ...).
        message: the server's `message` (what went wrong and how to fix it).
        field: the request field at fault, when the server names one.
        body: the parsed JSON error body, or None when the body was not JSON.
        retry_after: seconds from the `Retry-After` header, when the server sent one.
    """

    status: int = 0

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.field = field
        self.body = body
        self.retry_after = retry_after


class BadRequestError(Sam2ServerError):
    """400: the request's content cannot be used (bad image, unknown model id, URL refused)."""


class InvalidRequestError(BadRequestError):
    """422: the request does not match the API schema."""


class PayloadTooLargeError(BadRequestError):
    """413: body, download or decoded image is over a server cap."""


class UnauthorizedError(Sam2ServerError):
    """401: the server needs an API key, or the key given is not valid."""


class NotFoundError(Sam2ServerError):
    """404: usually "image_id not in cache: send the image" (or a wrong base_url / route)."""


class ConflictError(Sam2ServerError):
    """409: the request conflicts with server state."""


class UnavailableError(Sam2ServerError):
    """503: weights unavailable, model loading, or the server is busy (see `retry_after`)."""


class TooManyRequestsError(Sam2ServerError):
    """429: this API key is over its own share (queued images, video sessions); other keys
    are still served. Retry after `retry_after` seconds."""


_BY_STATUS: dict[int, type[Sam2ServerError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: TooManyRequestsError,
    503: UnavailableError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    field: str | None = None,
    body: dict[str, Any] | None = None,
    retry_after: float | None = None,
) -> Sam2ServerError:
    """The typed error for an HTTP status (unknown 4xx -> BadRequestError, else base)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BadRequestError if 400 <= status < 500 else Sam2ServerError
    return cls(status, message, field=field, body=body, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def error_from_response(response: httpx.Response) -> Sam2ServerError:
    """Build the typed error for a non-2xx response, keeping the server's JSON message."""
    body: dict[str, Any] | None = None
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        pass
    message = None
    if body is not None:
        # ours and Roboflow's send "message"; FastAPI-default servers send "detail"
        message = body.get("message") or body.get("detail")
    if not isinstance(message, str) or not message:
        text = response.text.strip().replace("\n", " ")[:300] if response.content else ""
        message = text or response.reason_phrase or "error"
    field = body.get("field") if body and isinstance(body.get("field"), str) else None
    return error_for_status(
        response.status_code,
        message,
        field=field,
        body=body,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )
