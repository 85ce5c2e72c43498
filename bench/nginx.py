"""Debian's nginx running deploy/nginx-affinity.conf as shipped (its listen port and replica
addresses rewritten), for tests/e2e/test_nginx_affinity.py and bench/affinity.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "nginx-affinity.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def site_config(listen: int, replicas: list[int]) -> str:
    """The shipped config with its listen port and the replicas' ports replaced (each
    replaced exactly once: a caller fails loudly if the file's shape changes)."""
    text = CONFIG.read_text()
    if len(replicas) != 2:
        raise ValueError(f"the shipped config names 2 replicas, got {len(replicas)} ports")
    swaps = [("listen 9001;", f"listen 127.0.0.1:{listen};")]
    swaps += [(f"127.0.0.1:{9101 + i} ", f"127.0.0.1:{port} ") for i, port in enumerate(replicas)]
    for old, new in swaps:
        if text.count(old) != 1:
            raise RuntimeError(f"{CONFIG} no longer has exactly one {old!r}")
        text = text.replace(old, new)
    return text


def main_config(work: Path, site: Path) -> str:
    """nginx's main context around the shipped http-level snippet, every path in `work`."""
    return f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {site};
}}
"""


@dataclass
class Nginx:
    url: str
    proc: subprocess.Popen
    work: Path

    def log(self) -> str:
        return (self.work / "error.log").read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_nginx(replicas: list[int]) -> Iterator[Nginx]:
    """nginx (foreground, one worker) balancing over the replicas on these loopback ports;
    config checked with `nginx -t` first; stopped and its directory removed at the end."""
    if not Path(NGINX).exists():
        raise FileNotFoundError("needs Debian's nginx: apt-get install nginx")
    work = Path(tempfile.mkdtemp(prefix="sam2serve-nginx-"))
    work.chmod(0o755)  # nginx's workers (user nobody when run as root) reach the temp dirs
    port = free_port()
    site = work / "sam2serve.conf"
    site.write_text(site_config(port, replicas))
    main = work / "nginx.conf"
    main.write_text(main_config(work, site))
    try:
        checked = subprocess.run(
            [NGINX, "-t", "-c", str(main), "-p", str(work)], capture_output=True, text=True
        )
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the config:\n{checked.stderr}")
        proc = subprocess.Popen(
            [NGINX, "-c", str(main), "-p", str(work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("nginx did not start") from None
                    time.sleep(0.05)
            yield Nginx(f"http://127.0.0.1:{port}", proc, work)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
