"""The server image (Containerfile), built and run with podman: the same masks as the native
server on the same weights, a healthy HEALTHCHECK, a non-root process, the refusal to bind
0.0.0.0 without keys, and SIGTERM -> exit 0.

The base is a Debian made locally (no registry here) and pip takes the host's configuration,
so torch comes from local files: here those are PyPI's default (CUDA) torch + torchvision
wheels, since only torch has a local CPU wheel and PyPI's torchvision does not load on it
(the image is 6.5 GB; with the CPU index ~1.8 GB). The build takes ~5 min on
2 cores and the container's first start exports the fast runtime (~2 min). Needs root and
Debian's podman, runc and mmdebstrap (.ci/run installs them).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import encode_image, photos
from tests.helpers_container import Podman, debian_base_tar, missing_tools, pip_build_volumes
from tests.helpers_server import free_port, running_server

pytestmark = [pytest.mark.slow, pytest.mark.container, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
KEY = "container-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKPOINT = "sam2.1_hiera_tiny.pt"  # the default model's official file name
BASE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sam2serve-tests"


@dataclass
class Deployment:
    podman: Podman
    container: str  # the serving container's name
    url: str  # the container's server
    native_url: str  # `sam2serve serve` on the same weights, outside any container
    image: str
    volume: str  # the runtime-cache volume
    names: list[str]  # every container started: removed at the end


def _wait_ready(
    podman: Podman, name: str, url: str, timeout_s: float, route: str = "/readyz"
) -> None:
    """Until `route` answers 200 (/readyz: the default model can serve; /healthz: alive)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{route}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            break
        time.sleep(1)
    logs = podman("logs", name, check=False)
    raise RuntimeError(f"container {name} not ready:\n{(logs.stdout + logs.stderr)[-4000:]}")


def _run(podman: Podman, dep_names: list[str], name: str, image: str, *args: str) -> None:
    dep_names.append(name)
    podman("run", "--detach", "--name", name, "--network", "host", *args, image)


@pytest.fixture(scope="module")
def deployment(
    real_weights_dir: Path, runtime_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.skip("builds and runs containers with rootful podman (run as root, as .ci/run)")
    if missing := missing_tools():
        pytest.skip(f"needs {' '.join(missing)}: apt-get install podman runc mmdebstrap")
    work = tmp_path_factory.mktemp("container")
    podman = Podman(work)
    tag = uuid.uuid4().hex[:12]
    base, image = f"localhost/sam2serve-test-base:{tag}", f"localhost/sam2serve-test:{tag}"
    volume = f"sam2serve-test-runtime-{tag}"
    names: list[str] = []
    # the default model's official file, read-only and readable by the image's user
    weights = work / "weights"
    weights.mkdir(mode=0o755)
    os.link(real_weights_dir / CHECKPOINT, weights / CHECKPOINT)

    with ExitStack() as stack:

        @stack.callback
        def _cleanup() -> None:
            for name in names:  # --volumes: the anonymous ones of containers run without -v
                podman("rm", "--force", "--volumes", "--time", "0", name, check=False)
            podman("volume", "rm", "--force", volume, check=False)
            podman("rmi", "--force", image, base, check=False)

        started = time.monotonic()
        podman("import", str(debian_base_tar(BASE_CACHE)), base)
        build_log = work / "build.log"
        build = podman.popen(
            "build", "--isolation", "chroot", "--format", "docker", "--layers=false",
            "--file", str(REPO / "Containerfile"), "--tag", image,
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", "TORCH_INDEX_URL=",  # torch as the host's pip config has it
            *pip_build_volumes(work), str(REPO),
            log=build_log,
        )  # fmt: skip
        stack.callback(build.kill)  # a no-op once it exited
        if build.wait(timeout=1500) != 0:
            raise RuntimeError(f"podman build failed:\n{build_log.read_text()[-6000:]}")
        built = time.monotonic()
        size = podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()
        print(f"\nimage built in {built - started:.0f} s (base included), {int(size) / 1e9:.2f} GB")

        podman("volume", "create", volume)
        port = free_port()
        name = f"sam2serve-test-{tag}"
        _run(
            podman, names, name, image,
            "--env", f"SAM2SERVE_API_KEYS={KEY}", "--env", f"SAM2SERVE_PORT={port}",
            "--env", "SAM2SERVE_ALLOW_DOWNLOAD=false",
            "--volume", f"{weights}:/data/weights:ro", "--volume", f"{volume}:/data/runtime-cache",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait_ready(podman, name, url, timeout_s=900)  # includes the fast runtime's export
        print(f"container ready {time.monotonic() - built:.0f} s after the build")

        # The native server loads the graphs the container exported (the export is the same
        # code outside, ~2 min more on 2 cores); it runs them with its own OpenVINO, torch
        # and HTTP stack. They go to the session's cache dir, which test_real_server reuses.
        exported = Path(
            podman("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip()
        )
        for key_dir in exported.iterdir():
            if key_dir.is_dir() and not (runtime_cache_dir / key_dir.name).exists():
                shutil.copytree(
                    key_dir,
                    runtime_cache_dir / key_dir.name,
                    ignore=shutil.ignore_patterns("compiled-*", "*.lock"),
                )
        native_url = stack.enter_context(
            running_server(real_weights_dir, env={"SAM2SERVE_API_KEYS": KEY})
        )
        yield Deployment(podman, name, url, native_url, image, volume, names)


def _embed(url: str, image_id: str) -> None:
    image = {"type": "base64", "value": encode_image(photos()["coffee"])}
    body = {"image": image, "image_id": image_id}
    r = httpx.post(f"{url}/sam2/embed_image", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text


POINT = {"points": [{"x": 300, "y": 200, "positive": True}]}
BOX = {"box": {"x": 300, "y": 200, "width": 200, "height": 150}}
BOX_AND_POINTS = {
    "box": {"x": 250, "y": 180, "width": 300, "height": 200},
    "points": [{"x": 250, "y": 180, "positive": True}, {"x": 20, "y": 20, "positive": False}],
}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"prompts": [POINT], "format": "rle"}, id="point-rle"),
        pytest.param({"prompts": [BOX, BOX_AND_POINTS], "format": "json"}, id="boxes-polygons"),
        pytest.param(
            {"prompts": [POINT, BOX], "multimask_output": False, "format": "rle"},
            id="single-mask",
        ),
        pytest.param({"prompts": [BOX_AND_POINTS], "format": "rle", "inline": True}, id="inline"),
    ],
)
def test_masks_equal_the_native_server(deployment: Deployment, body: dict) -> None:
    """Embed + click through the container and through `sam2serve serve` on the same
    checkpoint: the same predictions (masks, scores), exactly."""
    body = dict(body)
    if body.pop("inline", False):  # one request, no embed
        body["image"] = {"type": "base64", "value": encode_image(photos()["coffee"])}
    else:
        body["image_id"] = "coffee-1"
    answers = []
    for url in (deployment.url, deployment.native_url):
        if "image_id" in body:
            _embed(url, "coffee-1")
        r = httpx.post(f"{url}/sam2/segment_image", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        answers.append(r.json()["predictions"])
    container, native = answers
    assert len(container) == len(body["prompts"])  # one prediction per prompt
    assert container == native


def test_binary_masks_equal_the_native_server(deployment: Deployment) -> None:
    """The float logits too (format=binary: an .npz; the zip bytes differ with the Python
    build, the arrays must not)."""
    answers = []
    for url in (deployment.url, deployment.native_url):
        _embed(url, "coffee-2")
        body = {"image_id": "coffee-2", "prompts": [POINT], "format": "binary"}
        r = httpx.post(f"{url}/sam2/segment_image", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        with np.load(io.BytesIO(r.content), allow_pickle=False) as npz:
            answers.append({name: npz[name] for name in npz.files})
    container, native = answers
    assert sorted(container) == sorted(native) and container
    for name, array in container.items():
        np.testing.assert_array_equal(array, native[name], err_msg=name)


def test_keys_are_required(deployment: Deployment) -> None:
    image = {"type": "base64", "value": base64.b64encode(b"x").decode()}
    r = httpx.post(f"{deployment.url}/sam2/embed_image", json={"image": image}, timeout=30)
    assert r.status_code == 401


def test_healthy_non_root_with_the_runtime_cache_on_the_volume(deployment: Deployment) -> None:
    podman, name = deployment.podman, deployment.container
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    health = podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
    assert health == "healthy"
    # PID 1 of the container is the server itself, as the image's user
    pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uid) == {"10001"}
    assert "sam2serve" in Path(f"/proc/{pid}/cmdline").read_text()
    # the fast runtime's export went to the volume (a new container on it skips the export)
    mount = podman("volume", "inspect", "--format", "{{.Mountpoint}}", deployment.volume)
    exported = [p for p in Path(mount.stdout.strip()).iterdir() if p.is_dir()]
    assert [p.name.split("-")[0] for p in exported] == ["sam2.1_hiera_tiny"], exported
    # written by the container's user: the export, and OpenVINO's compiled blobs inside it
    assert {p.stat().st_uid for p in exported[0].rglob("*")} == {10001}
    assert list(exported[0].glob("compiled-*/*")), "no compiled blobs on the volume"


@pytest.mark.parametrize(
    ("env", "serves"),
    [
        pytest.param({}, False, id="no-keys-refused"),
        pytest.param({"SAM2SERVE_ALLOW_PUBLIC_WITHOUT_KEYS": "true"}, True, id="explicit-opt-out"),
    ],
)
def test_public_bind_needs_keys_or_the_opt_out(
    deployment: Deployment, env: dict[str, str], serves: bool
) -> None:
    podman = deployment.podman
    port = free_port()
    name = f"{deployment.container}-bind-{port}"
    args = [f"--env={k}={v}" for k, v in {**env, "SAM2SERVE_PORT": str(port)}.items()]
    _run(podman, deployment.names, name, deployment.image, *args, "--env=SAM2SERVE_PRELOAD=false")
    if serves:
        url = f"http://127.0.0.1:{port}"
        # no preload: alive and answering; /readyz waits for a usable default model
        _wait_ready(podman, name, url, timeout_s=120, route="/healthz")
    else:
        code = podman("wait", name, timeout=120).stdout.strip()
        logs = podman("logs", name)
        assert code != "0"
        assert "refusing to bind 0.0.0.0 with no API keys" in logs.stdout + logs.stderr


def test_sigterm_stops_cleanly(deployment: Deployment) -> None:
    """Last in this module: it stops the serving container."""
    podman, name = deployment.podman, deployment.container
    podman("kill", "--signal", "TERM", name)
    assert podman("wait", name, timeout=60).stdout.strip() == "0"
    logs = podman("logs", name)
    assert "Finished server process" in logs.stdout + logs.stderr
