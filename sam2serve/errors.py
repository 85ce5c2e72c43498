"""Typed errors: each knows its HTTP status and a public message that says how to fix it.

Every layer raises these; only the API layer turns them into responses. Anything that is
not a `ServiceError` is a bug and becomes a 500 with a generic message.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: `status` is the HTTP status, `message` is safe to show to the client."""

    status: int = 500

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class BadRequest(ServiceError):
    """400: the request is well-formed JSON but its content cannot be used."""

    status = 400


class Unauthorized(ServiceError):
    """401: a key is required and was missing or wrong."""

    status = 401


class NotInCache(ServiceError):
    """404: the image_id is unknown to this server (never embedded, or evicted)."""

    status = 404


class Conflict(ServiceError):
    """409: the request conflicts with server state."""

    status = 409


class SchemaError(ServiceError):
    """422: the JSON does not match the request schema."""

    status = 422


class PayloadTooLarge(ServiceError):
    """413: body, download or decoded image is over a configured cap."""

    status = 413


class TooManyRequests(ServiceError):
    """429: this API key is over its own share of a resource (queued images, video
    sessions); other keys are still served. `retry_after`: seconds (the Retry-After header)."""

    status = 429

    def __init__(
        self, message: str, *, retry_after: float | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """503: the server cannot serve this now (weights missing, overloaded, draining)."""

    status = 503

    def __init__(
        self, message: str, *, retry_after: float | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.retry_after = retry_after
