"""Running the app under uvicorn: JSON errors even for malformed HTTP, and a clean stop.

- Requests that uvicorn refuses before the app sees them (a bad Content-Length, a broken
  request line or header) get a JSON 400 `{"message": ...}` like every other error,
  instead of uvicorn's plain-text one.
- SIGTERM / SIGINT: /readyz answers 503 at once, the listening socket closes, in-flight
  requests finish (up to `Settings.shutdown_grace_s`), and the process exits with status
  0. uvicorn itself re-raises the signal after a graceful stop, which makes supervisors
  report a crash (status 143 / -15) for a normal shutdown.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI

from sam2serve.config import Settings

_BAD_HTTP = "malformed HTTP request ({why}); check the request line, Content-Length and headers"


def _json_400(msg: str) -> bytes:
    return json.dumps({"message": _BAD_HTTP.format(why=msg.rstrip("."))}).encode()


def protocol_class() -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with JSON 400s."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class JsonHttpToolsProtocol(HttpToolsProtocol):
            def send_400_response(self, msg: str) -> None:
                body = _json_400(msg)
                head = (
                    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                )
                self.transport.write(head + body)
                self.transport.close()

        return JsonHttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a uvicorn[standard] dependency
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        class JsonH11Protocol(H11Protocol):
            def send_400_response(self, msg: str) -> None:
                body = _json_400(msg)
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ]
                for event in (
                    h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                    h11.Data(data=body),
                    h11.EndOfMessage(),
                ):
                    self.transport.write(self.conn.send(event))
                self.transport.close()

        return JsonH11Protocol


class GracefulServer(uvicorn.Server):
    """A uvicorn server that reports draining at once and exits 0 after a signal."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        state = getattr(app, "state", None)
        if state is not None:
            state.draining = True  # /readyz: 503 from now on
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            # a signal asked for this stop and it went well: do not re-raise it
            self._captured_signals.clear()


def serve(app: FastAPI, settings: Settings, log_level: str) -> None:
    """Run `app` on settings.host:settings.port until SIGTERM/SIGINT; returns normally."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # uvicorn's access log prints query strings, which may hold api_key
        log_level=log_level,
        http=protocol_class(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
    )
    GracefulServer(config).run()
