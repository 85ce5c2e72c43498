"""Helpers of the reliability battery: a real server process, a client that keeps a
ledger of every answer, raw-socket requests, metrics parsing and test images."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from sam2serve.testing import TEST_MODEL_ID, wait_until_ready
from tests.helpers_server import free_port

ROUTES = ("/sam2/embed_image", "/sam2/segment_image", "/healthz", "/readyz", "/info", "/metrics")


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def reliability_server(weights_dir: Path, **env: str) -> Iterator[Server]:
    """`python -m tests.reliability_server` (the CLI's runner, tiny model, torch runtime)
    on a free port; stopped with SIGTERM at the end."""
    port = free_port()
    full_env = {
        **os.environ,
        "SAM2SERVE_WEIGHTS_DIR": str(weights_dir),
        "SAM2SERVE_DEFAULT_MODEL": TEST_MODEL_ID,
        "SAM2SERVE_RUNTIME": "torch",
        "SAM2SERVE_DEVICE": "cpu",
        "SAM2SERVE_ALLOW_DOWNLOAD": "false",
        "SAM2SERVE_PORT": str(port),
        **env,
    }
    with tempfile.NamedTemporaryFile(prefix="sam2serve-rel-", suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability_server"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", proc, Path(log.name))
        try:
            try:
                wait_until_ready(server.url, proc, 120)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}:\n{server.log()}") from exc
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def route_label(path: str) -> str:
    """The route label the server's metrics use for a request path."""
    if path in ROUTES or path == "/":
        return path
    if path.startswith("/static/"):
        return "/static"
    return "unmatched"


@dataclass
class Ledger:
    """What a client saw: answers per (route label, status)."""

    counts: Counter = field(default_factory=Counter)

    def hook(self, response: httpx.Response) -> None:
        self.counts[(route_label(response.request.url.path), str(response.status_code))] += 1

    def client(self, base_url: str, **kwargs: object) -> httpx.Client:
        return httpx.Client(
            base_url=base_url, event_hooks={"response": [self.hook]}, timeout=120, **kwargs
        )


def scrape_requests(url: str) -> Counter:
    """sam2serve_requests_total as {(route, status): count}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter = Counter()
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == "sam2serve_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["route"], sample.labels["status"])] += int(sample.value)
    return out


def scrape_value(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


def raw_request(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to the server's socket; the whole answer until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def png_b64(width: int, height: int, seed: int = 0, *, noise: bool = False) -> str:
    """A PNG of the given size: flat colour with a square (compresses to a few KB even at
    36 MP), or random noise (`noise`, distinct per seed)."""
    rng = np.random.default_rng(seed)
    if noise:
        rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    else:
        rgb = np.full((height, width, 3), seed % 256, dtype=np.uint8)
        rgb[height // 4 : height // 2, width // 4 : width // 2] = (255 - seed % 256, 10, 200)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def png_header_b64(width: int, height: int) -> str:
    """Only a PNG's signature and IHDR chunk: declares width x height, holds no pixels."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk
    data += struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return base64.b64encode(data).decode()
