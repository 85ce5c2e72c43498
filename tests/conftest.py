"""Shared fixtures: seeded random SAM2 checkpoints (tiny test architecture and the real
hiera_tiny ones), real photos from scikit-image, and apps/services built on them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam2serve.config import Settings
from sam2serve.registry import REGISTRY, SAM3_REGISTRY
from sam2serve.testing import (
    TEST_MODEL_ID,
    registry_with_test_model,
    sam3_tiny_spec,
    tiny_test_spec,
    write_random_checkpoint,
    write_random_sam3_checkpoint,
)


def encode_image(rgb: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
        "chelsea": skimage.data.chelsea(),
    }


_MODEL_FIXTURES = frozenset(
    {"tiny_weights_dir", "real_weights_dir", "sam3_tiny_weights_dir", "sam3_real_weights_dir"}
)
#: fixtures heavy enough that every test using them is `slow` (SAM 3's real architecture:
#: ~840 M parameters, a 3.4 GB checkpoint, ~35 s per image embed on 2 cores)
_SLOW_FIXTURES = frozenset({"sam3_real_weights_dir"})


#: markers of heavy tests: each is also `slow`, so the default run (`-m "not slow"` in
#: pyproject) leaves them to `.ci/run`'s second pass (`pytest -m slow`). `openvino`: those
#: tests share one export of the test model's graphs, ~30 s on this CPU before the first runs.
_HEAVY_MARKERS = frozenset({"browser", "ray", "reliability", "openvino"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need: `model` for every test that builds a real SAM2
    architecture (it uses a weights fixture), so `-m "not model"` runs the quick ones;
    `slow` for every heavy one (browser, Ray cluster, reliability battery, OpenVINO export)."""
    for item in items:
        if _MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if _HEAVY_MARKERS & {mark.name for mark in item.iter_markers()}:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def runtime_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exported fast-runtime graphs go to a per-session dir (also for server subprocesses),
    never into the user's cache."""
    path = tmp_path_factory.mktemp("runtime-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("SAM2SERVE_RUNTIME_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def photo_set() -> dict[str, np.ndarray]:
    return photos()


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights dir holding the tiny test architecture with seeded random weights."""
    path = tmp_path_factory.mktemp("weights-tiny")
    write_random_checkpoint(tiny_test_spec(), path, seed=0)
    return path


@pytest.fixture(scope="session")
def real_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights dir with the real SAM 2.1 and SAM 2 hiera_tiny architectures, random weights."""
    path = tmp_path_factory.mktemp("weights-real")
    for model_id in ("sam2.1_hiera_tiny", "sam2_hiera_tiny"):
        write_random_checkpoint(REGISTRY[model_id], path, seed=1)
    return path


@pytest.fixture(scope="session")
def sam3_tiny_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights dir holding SAM 3's architecture at the tiny sizes (`sam3_test_tiny.pt`),
    seeded random weights in Meta's sam3.pt layout (~5 s to build and save)."""
    path = tmp_path_factory.mktemp("weights-sam3-tiny")
    write_random_sam3_checkpoint(sam3_tiny_spec(), path, seed=0)
    return path


@pytest.fixture(scope="session")
def sam3_real_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights dir with SAM 3's real architecture under its official name (sam3.pt, 3.4 GB),
    seeded random weights (~40 s to build and save). Tests using it are `slow`."""
    path = tmp_path_factory.mktemp("weights-sam3-real")
    write_random_sam3_checkpoint(SAM3_REGISTRY["sam3"], path, seed=1)
    return path


def tiny_settings(weights_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "weights_dir": weights_dir,
        "default_model": TEST_MODEL_ID,
        "allow_download": False,
        "device": "cpu",
        "preload": False,  # tests load models when they first use them
        # Meta's model code, exact: tests about the fast runtime ask for it by name
        "runtime": "torch",
    }
    values.update(overrides)
    return Settings(**values)


def _clients(build: Callable[..., tuple[Settings, Any]]) -> Iterator[Callable[..., Any]]:
    """Yield a factory of entered TestClients over the apps `build(**kwargs)` describes
    (settings, services); every one made is exited after."""
    from fastapi.testclient import TestClient

    from sam2serve.api.app import create_app

    clients: list[TestClient] = []

    def make(**kwargs: object) -> TestClient:
        settings, services = build(**kwargs)
        client = TestClient(create_app(settings, services), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def make_client(tiny_weights_dir: Path) -> Iterator:
    """Factory: a TestClient over an app on the tiny model, with Settings overrides."""
    from sam2serve.wiring import build_services

    def build(**overrides: object) -> tuple[Settings, Any]:
        settings = tiny_settings(tiny_weights_dir, **overrides)
        return settings, build_services(settings, registry_with_test_model())

    yield from _clients(build)


@pytest.fixture
def client(make_client):  # type: ignore[no-untyped-def]
    return make_client()


@pytest.fixture(scope="module")
def make_sam3_client(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights_dir: Path, sam3_tiny_weights_dir: Path
) -> Iterator:
    """Apps serving the tiny SAM 2 and the tiny SAM 3 (seeded random weights, one weights
    directory): `make(sam3={...SAM 3 settings}, **Settings overrides)`."""
    from sam2serve.sam3.config import Sam3Settings
    from sam2serve.wiring import build_services
    from tests.helpers_sam3 import both_registries, link_weights, sam3_settings

    weights = link_weights(
        tmp_path_factory.mktemp("weights-both"), tiny_weights_dir, sam3_tiny_weights_dir
    )

    def build(sam3: dict | None = None, **overrides: object) -> tuple[Settings, Any]:
        settings = sam3_settings(weights, **overrides)
        services = build_services(
            settings, both_registries(), sam3_settings=Sam3Settings(**(sam3 or {}))
        )
        return settings, services

    yield from _clients(build)
