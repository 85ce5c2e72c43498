"""The outermost application layer every HTTP request passes through.

For each request it:

- gives it a request id (the client's `X-Request-ID` when it is a short token, else a new
  one), returned in the `X-Request-ID` response header;
- turns any exception that escaped the routes into a JSON 500 naming that id, and logs the
  traceback with the id (a 500 is a bug: the log line is how to find it);
- counts every outcome in `sam2serve_requests_total` and the latency histogram, 500s and
  clients that went away (status 499) included, and writes one access-log line;
- cancels the route when the client disconnects before the answer is sent, so work queued
  for a client that has gone is never started.

It is plain ASGI (not Starlette's BaseHTTPMiddleware) so that it sees exceptions and
disconnects itself, below Starlette's own last-resort error page.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sam2serve")

#: status recorded for a request whose client disconnected before the answer (nginx's code)
CLIENT_GONE = 499
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_of(scope: Scope) -> str:
    """The id this layer gave the request ("" outside it)."""
    return str(scope.get("state", {}).get("request_id", ""))


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        status: int | None = None
        disconnected = asyncio.Event()
        body_done = asyncio.Event()

        async def guarded_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        watcher: asyncio.Task[Message] | None = None

        async def guarded_receive() -> Message:
            if watcher is not None:  # the body is read: the next message is the disconnect
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_done.set()
            return message

        app_task = asyncio.ensure_future(self.app(scope, guarded_receive, guarded_send))
        waiter = asyncio.ensure_future(body_done.wait())
        try:
            done, _ = await asyncio.wait({app_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if app_task not in done:
                watcher = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait(
                    {app_task, watcher}, return_when=asyncio.FIRST_COMPLETED
                )
                if app_task not in done and status is None:
                    # the client went away before its answer: stop working for it
                    disconnected.set()
                    app_task.cancel()
            await app_task
        except asyncio.CancelledError:
            if not disconnected.is_set():
                app_task.cancel()
                raise  # the server itself is cancelling us
            status = status or CLIENT_GONE
        except Exception as exc:  # a bug: answer JSON 500 with the id, log the traceback
            if _client_gone(exc):
                status = status or CLIENT_GONE
            else:
                log.exception(
                    "internal error in %s %s (request %s)", scope["method"], scope["path"], rid
                )
                if status is None:
                    status = 500
                    await JSONResponse(
                        {
                            "message": "internal server error; the server log has the details "
                            f"under request id {rid}",
                            "request_id": rid,
                        },
                        status_code=500,
                        headers={REQUEST_ID_HEADER: rid},
                    )(scope, receive, send)
        finally:
            for task in (waiter, watcher):
                if task is not None and not task.done():
                    task.cancel()
            _record(scope, status or CLIENT_GONE, time.perf_counter() - started, rid)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _CLIENT_ID.match(text):
                return text
    return uuid.uuid4().hex


def _client_gone(exc: BaseException) -> bool:
    """The client closed the connection (reading the body, or while we answered)."""
    from starlette.requests import ClientDisconnect

    return isinstance(exc, (ClientDisconnect, ConnectionError)) or (
        type(exc).__name__ == "ClientDisconnected"  # uvicorn's, an OSError
    )


def _record(scope: Scope, status: int, seconds: float, rid: str) -> None:
    route: Any = scope.get("route")
    label = getattr(route, "path", None)
    if label is None and scope.get("endpoint") is not None:  # a Mount (/static): its prefix
        label = scope.get("root_path") or None
    label = label or "unmatched"
    app = scope.get("app")
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    if metrics is not None:
        metrics.requests.labels(label, str(status)).inc()
        metrics.latency.labels(label).observe(seconds)
    # access log without the query string: it may carry api_key
    log.info("%s %s %d %.1fms id=%s", scope["method"], scope["path"], status, seconds * 1e3, rid)
