"""Sending one built request (`video_calls.Call`) over the clients' httpx connection.

The clients (`sam2serve.client.http`) own the connection and hand their video sessions
(`sam2serve.client.video`) a `Sender` / `AsyncSender` over it: the sessions only send requests
and read answers, so they need nothing else of the client. Failures to reach the server become
the SDK's `Sam2ConnectionError` / `Sam2TimeoutError`; error answers its typed server errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx

from sam2serve.client.errors import Sam2ConnectionError, Sam2TimeoutError, error_from_response
from sam2serve.client.video_calls import Call, checked

__all__ = ["AsyncSender", "Sender", "transport_error"]


def transport_error(base_url: str, exc: httpx.TransportError) -> Exception:
    """The SDK's error for a request that got no answer from `base_url`."""
    if isinstance(exc, httpx.TimeoutException):
        return Sam2TimeoutError(
            f"no answer from {base_url} within the timeout ({type(exc).__name__}); "
            "raise timeout= (the first request may be loading the model)"
        )
    return Sam2ConnectionError(f"cannot reach sam2serve at {base_url}: {exc or type(exc).__name__}")


class Sender:
    """Sends `Call`s over a blocking httpx client (with its base URL, auth query params)."""

    def __init__(self, http: httpx.Client, base_url: str, params: dict[str, str]) -> None:
        self._http = http
        self.base_url = base_url
        self.params = dict(params)

    def send(self, call: Call) -> httpx.Response:
        """The successful response, or the SDK's typed error."""
        try:
            response = self._http.request(call.method, call.url, **call.kwargs())
        except httpx.TransportError as exc:
            raise transport_error(self.base_url, exc) from exc
        return checked(response)

    @contextmanager
    def stream(self, call: Call) -> Iterator[httpx.Response]:
        """A successful streamed response, closed on leaving the block; transport failures
        while reading it inside the block become the SDK's errors too."""
        try:
            with self._http.stream(call.method, call.url, **call.kwargs()) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise transport_error(self.base_url, exc) from exc


class AsyncSender:
    """The asyncio twin of `Sender`, over an `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, params: dict[str, str]) -> None:
        self._http = http
        self.base_url = base_url
        self.params = dict(params)

    async def send(self, call: Call) -> httpx.Response:
        """See `Sender.send`."""
        try:
            response = await self._http.request(call.method, call.url, **call.kwargs())
        except httpx.TransportError as exc:
            raise transport_error(self.base_url, exc) from exc
        return checked(response)

    @asynccontextmanager
    async def stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        """See `Sender.stream`."""
        try:
            async with self._http.stream(call.method, call.url, **call.kwargs()) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise transport_error(self.base_url, exc) from exc
