"""Checkpoints: atomic download from a local server, strict loading, clear 503 messages."""

from __future__ import annotations

import dataclasses
import http.server
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sam2serve.registry import REGISTRY
from sam2serve.runtime.torch_runtime import build_model, load_checkpoint
from sam2serve.runtime.weights import WeightsError, download, ensure_checkpoint
from sam2serve.testing import tiny_test_spec

PAYLOAD = b"checkpoint-bytes" * 4096


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/cut.pt":  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) * 2))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def file_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _spec(url: str):  # type: ignore[no-untyped-def]
    return dataclasses.replace(REGISTRY["sam2.1_hiera_tiny"], url=url)


def test_download_is_atomic_and_complete(file_server: str, tmp_path: Path) -> None:
    path = download(_spec(f"{file_server}/ok.pt"), tmp_path, progress=False)
    assert path == tmp_path / "sam2.1_hiera_tiny.pt" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam2.1_hiera_tiny.pt"]


@pytest.mark.parametrize("name", ["cut.pt", "missing.pt"])
def test_failed_download_leaves_nothing(file_server: str, tmp_path: Path, name: str) -> None:
    with pytest.raises(WeightsError) as err:
        download(_spec(f"{file_server}/{name}"), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    assert "sam2serve download sam2.1_hiera_tiny" in err.value.message
    assert err.value.status == 503


def test_no_download_allowed_names_file_dir_and_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        ensure_checkpoint(REGISTRY["sam2_hiera_large"], tmp_path, allow_download=False)
    msg = err.value.message
    assert "sam2_hiera_large.pt" in msg and str(tmp_path) in msg
    assert "sam2serve download sam2_hiera_large" in msg


def test_unreachable_url_is_503(tmp_path: Path) -> None:
    spec = _spec("https://nonexistent.invalid/sam2.pt")
    with pytest.raises(WeightsError):
        ensure_checkpoint(spec, tmp_path, allow_download=True)
    assert list(tmp_path.iterdir()) == []


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("mismatch", "missing keys"),
        ("not-a-dict", "state_dict"),
        ("pickle-code", "unreadable"),
        ("garbage", "unreadable"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, content: str, words: str) -> None:
    spec = tiny_test_spec()
    model = build_model(spec, None, torch.device("cpu"))
    path = tmp_path / spec.filename
    if content == "mismatch":
        state = dict(model.state_dict())
        state.pop(next(iter(state)))
        torch.save({"model": state}, path)
    elif content == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif content == "pickle-code":
        path.write_bytes(pickle.dumps({"model": _Evil()}))
    else:
        path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(WeightsError) as err:
        load_checkpoint(model, spec, path)
    assert words in err.value.message
