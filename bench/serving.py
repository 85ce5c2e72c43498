"""A real sam2serve server process for the quota / refusal benchmarks, and readings of its
CPU time and peak memory from /proc (Linux).

    python -m bench.serving --registry builtin|test   # the child: serve from SAM2SERVE_* env

`server(...)` starts that child on a free loopback port with seeded random weights of the
requested architecture, waits for /readyz and yields (url, pid).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TEST_MODEL = "test_tiny"


def write_weights(model_id: str, weights_dir: Path) -> None:
    """Seeded random weights of `model_id` (or the 256 px test architecture) in Meta's format."""
    from sam2serve.registry import REGISTRY
    from sam2serve.testing import tiny_test_spec, write_random_checkpoint

    spec = tiny_test_spec() if model_id == TEST_MODEL else REGISTRY[model_id]
    if not (weights_dir / spec.filename).is_file():
        write_random_checkpoint(spec, weights_dir, seed=1)


@contextmanager
def server(model_id: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> Iterator:
    """Start `python -m bench.serving` with `model_id` as the default model; yields (url, pid)."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="sam2-bench-") as tmp:
        weights = Path(os.environ.get("SAM2SERVE_BENCH_WEIGHTS", tmp))
        weights.mkdir(parents=True, exist_ok=True)
        write_weights(model_id, weights)
        full_env = {
            **os.environ,
            "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO)),
            "SAM2SERVE_WEIGHTS_DIR": str(weights),
            "SAM2SERVE_DEFAULT_MODEL": model_id,
            "SAM2SERVE_ALLOW_DOWNLOAD": "false",
            "SAM2SERVE_DEVICE": "cpu",
            "SAM2SERVE_PORT": str(port),
            **(env or {}),
        }
        registry = "test" if model_id == TEST_MODEL else "builtin"
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.serving", "--registry", registry],
                env=full_env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_alive(url, proc, timeout_s, log)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("server not ready")
        time.sleep(0.2)


def _wait_alive(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident since start or the last `reset_peak`) in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def machine() -> dict[str, object]:
    import platform

    from sam2serve.runtime.cpu import cpu_flags

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", choices=("builtin", "test"), default="builtin")
    args = parser.parse_args()
    from sam2serve.api.app import create_app
    from sam2serve.api.server import serve
    from sam2serve.config import Settings
    from sam2serve.registry import REGISTRY
    from sam2serve.runtime.memory import pin_mmap_threshold
    from sam2serve.testing import registry_with_test_model
    from sam2serve.wiring import build_services

    settings = Settings()
    pin_mmap_threshold()
    registry = registry_with_test_model() if args.registry == "test" else REGISTRY
    services = build_services(settings, registry, background_prepare=True)
    serve(create_app(settings, services), settings, "warning")


if __name__ == "__main__":
    main()
