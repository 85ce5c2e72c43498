"""A real Label Studio for the e2e test: installed from PyPI into its own venv (it pins its
own Django stack: never the project's venv), cached between runs, started on SQLite on
loopback with a preset user and legacy API token, stopped with everything it started."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers_server import free_port

VERSION = "1.23.2"
#: label-studio 1.23.2 starts only with sentry-sdk < 3 (3.0 rejects an option it passes)
REQUIREMENTS = [f"label-studio=={VERSION}", "sentry-sdk<3"]
#: the venv is reused between runs (a second run skips the ~4 min install)
VENV = Path(
    os.environ.get("SAM2SERVE_TEST_LS_VENV", Path.home() / ".cache" / "sam2serve-tests" / "ls-venv")
)
INSTALL_TIMEOUT_S = 480


def ensure_venv(venv: Path = VENV) -> Path:
    """The `label-studio` executable of a venv holding REQUIREMENTS; installs on first use.
    A marker file names what was installed, so a half-finished install is redone."""
    marker = venv / "sam2serve-installed.txt"
    exe = venv / "bin" / "label-studio"
    if exe.exists() and marker.exists() and marker.read_text() == " ".join(REQUIREMENTS):
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)  # not the project venv's python
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, *REQUIREMENTS], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"installing {REQUIREMENTS} failed:\n{done.stderr[-4000:]}")
    marker.write_text(" ".join(REQUIREMENTS))
    return exe


@dataclass
class LabelStudio:
    url: str
    token: str
    email: str
    password: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=200
        )


@contextmanager
def running_label_studio(
    exe: Path, data_dir: Path, timeout_s: float = 240
) -> Iterator[LabelStudio]:
    """Label Studio on a free loopback port; its whole process group is stopped on exit."""
    port = free_port()
    ls = LabelStudio(
        url=f"http://127.0.0.1:{port}",
        token=secrets.token_hex(20),
        email="e2e@sam2serve.test",
        password="e2e-" + secrets.token_hex(8),
    )
    env = {
        **os.environ,
        # sam2serve runs on loopback too: Label Studio refuses an ML backend there, and it
        # also checks the webhook it creates for it (<url>/webhook) with its SSRF guard
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        str(exe), "start", "--no-browser", "--port", str(port),
        "--internal-host", "127.0.0.1", "--data-dir", str(data_dir),
        "--username", ls.email, "--password", ls.password,
        "--user-token", ls.token, "--enable-legacy-api-token",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_ready(ls, proc, timeout_s, log)
            yield ls
        finally:
            _stop(proc)


def _wait_ready(ls: LabelStudio, proc: subprocess.Popen, timeout_s: float, log) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            r = httpx.get(
                f"{ls.url}/api/projects", headers={"Authorization": f"Token {ls.token}"}, timeout=5
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-4000:]
    raise RuntimeError(f"Label Studio did not start (exit {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started, then SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with suppress(ProcessLookupError):  # whatever of the group is left (spawned workers)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
