"""Build and run the server image with Debian's podman, as root, in a sandbox like CI's.

What this machine needs (checked by hand, see issue 19): builds run with `--isolation chroot`,
containers with the runc runtime, the cgroupfs manager and host networking, and a
containers.conf with `default_ulimits = []`. No registry image can be pulled, so the base image
is a Debian bookworm made locally by mmdebstrap (cached between runs). RUN steps see no
`podman build --env`, so the host's pip configuration (local wheels, offline mirrors,
constraints, CA bundle) is written to a pip.conf and mounted into the build with every local
path it names.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

TOOLS = ("podman", "runc", "mmdebstrap")
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
#: a cached base older than this is made again (Debian security updates)
BASE_MAX_AGE_S = 7 * 24 * 3600
#: the pip options a build takes over from the host's configuration
PIP_KEYS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "constraint",
    "cert",
    "trusted-host",
    "default-timeout",
)


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


class Podman:
    """`podman` with this sandbox's global options and a private containers.conf."""

    def __init__(self, workdir: Path) -> None:
        conf = workdir / "containers.conf"
        # crun/runc cannot set the default RLIMIT_NPROC here
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.argv = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.argv, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"podman {shlex.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
            )
        return proc

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                [*self.argv, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )


def debian_base_tar(cache_dir: Path) -> Path:
    """A Debian bookworm rootfs with python3 and its venv module (mmdebstrap minbase, ~225 MB,
    1-2 min), made once and reused while younger than a week."""
    tar = cache_dir / f"bookworm-minbase-{BASE_PACKAGES.replace(',', '-')}.tar"
    if tar.is_file() and time.time() - tar.stat().st_mtime < BASE_MAX_AGE_S:
        return tar
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f"{tar.stem}.partial-{os.getpid()}.tar"  # mmdebstrap: format from suffix
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", partial],
        check=True,
        capture_output=True,
        timeout=900,
    )
    partial.replace(tar)
    return tar


def host_pip_config() -> dict[str, str]:
    """The pip options in effect here (config files and PIP_* variables; variables win)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        if key in PIP_KEYS:
            (env if section == ":env:" else files)[key] = value.strip().strip("'\"")
    return {**files, **env}


def _local_paths(key: str, value: str) -> list[Path]:
    """Host paths an option refers to. A file:// index (PEP 503 `.../simple`) links to its
    files by relative paths, so the directory above the index root goes in whole."""
    if key in ("constraint", "cert"):
        return [Path(value)]
    if key in ("index-url", "extra-index-url", "find-links"):
        paths = []
        for item in value.split():
            if item.startswith("file://"):
                path = Path(urlparse(item).path)
                paths.append(path.parent if key != "find-links" else path)
            elif item.startswith("/"):
                paths.append(Path(item))
        return paths
    return []


def pip_build_volumes(workdir: Path) -> list[str]:
    """`podman build` arguments that give the RUN steps the host's pip setup: a pip.conf at
    /etc/pip.conf and, read-only at the same paths, every local file or directory it names."""
    config = host_pip_config()
    pip_conf = workdir / "pip.conf"
    pip_conf.write_text(
        "[global]\n" + "".join(f"{key} = {value}\n" for key, value in config.items())
    )
    args = ["--volume", f"{pip_conf}:/etc/pip.conf:ro"]
    seen: set[Path] = set()
    for key, value in config.items():
        for path in _local_paths(key, value):
            if path.exists() and path not in seen:
                seen.add(path)
                args += ["--volume", f"{path}:{path}:ro"]
    return args
