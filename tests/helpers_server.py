"""Run a real `sam2serve serve` process on a free loopback port for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sam2serve.config import Settings
from sam2serve.testing import wait_until_ready

SAM2SERVE = str(Path(sys.executable).with_name("sam2serve"))


@contextmanager
def threaded_server(settings: Settings, registry: dict | None = None) -> Iterator[str]:
    """uvicorn on a free loopback port in a daemon thread, app on the test registry
    (the tiny random-weight model and the official ids; or `registry`). Yields the base URL."""
    import uvicorn

    from sam2serve.api.app import create_app
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services

    app = create_app(settings, build_services(settings, registry or registry_with_test_model()))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    weights_dir: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 300
) -> Iterator[str]:
    """Start the server, wait for /readyz (which includes the fast runtime's one-time export
    on a cold cache dir), yield its base URL, stop it."""
    port = free_port()
    full_env = {
        **os.environ,
        "SAM2SERVE_WEIGHTS_DIR": str(weights_dir),
        "SAM2SERVE_ALLOW_DOWNLOAD": "false",
        "SAM2SERVE_DEVICE": "cpu",
        **(env or {}),
    }
    # server output goes to a file, not a pipe: a full pipe would stall the server
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [SAM2SERVE, "serve", "--port", str(port), *args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_ready(url, proc, timeout_s)
            except RuntimeError as exc:
                log.seek(0)
                raise RuntimeError(f"{exc}:\n{log.read().decode(errors='replace')}") from exc
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
