"""A stand-in for Label Studio's media routes in integration tests: files served on a free
loopback port to requests carrying `Authorization: Token <token>` (401 otherwise) and not
asking for `Accept: image/*` only (406, as Label Studio's DRF views answer), every request
recorded. The real Label Studio is in tests/e2e/test_label_studio.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class MediaServer:
    url: str
    files: dict[str, bytes]
    token: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, auth)


@contextmanager
def media_server(files: dict[str, bytes], token: str) -> Iterator[MediaServer]:
    state = MediaServer("", files, token)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            state.requests.append((self.path, auth))
            body = state.files.get(self.path)
            status = 401 if auth != f"Token {token}" else 200 if body is not None else 404
            if "image/*" in self.headers.get("Accept", ""):  # as Label Studio's file views
                status = 406
            self.send_response(status)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            if status == 200:
                self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
