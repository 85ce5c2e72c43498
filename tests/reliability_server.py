"""`python -m tests.reliability_server`: the server exactly as `sam2serve serve` runs it
(same app, same uvicorn runner: JSON 400s, SIGTERM -> exit 0), on the registry that also
holds the tiny random-weight test model. Settings come from `SAM2SERVE_*` variables."""

from __future__ import annotations

import logging
from dataclasses import replace

from sam2serve.api.app import create_app
from sam2serve.api.server import serve
from sam2serve.config import Settings
from sam2serve.registry import ModelSpec
from sam2serve.runtime.memory import pin_mmap_threshold
from sam2serve.testing import (
    registry_with_test_model,
    sam3_registry_with_test_model,
    sam3_tiny_spec,
    tiny_test_spec,
)
from sam2serve.wiring import build_services


def registry() -> dict[str, ModelSpec]:
    """The test registry of both families, where the default ids (hiera_tiny ->
    sam2.1_hiera_tiny; sam3/sam3_final -> sam3) also name the tiny architectures, so the ids
    in the OpenAPI examples resolve to weights that are present (an API fuzzer sends them;
    the tiny SAM 3 checkpoint is there only where the caller put it)."""
    return {
        **registry_with_test_model(),
        **sam3_registry_with_test_model(),
        "sam2.1_hiera_tiny": replace(tiny_test_spec(), model_id="sam2.1_hiera_tiny"),
        "sam3": replace(sam3_tiny_spec(), model_id="sam3"),
    }


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    pin_mmap_threshold()
    services = build_services(settings, registry(), background_prepare=True)  # as `serve` does
    serve(create_app(settings, services), settings, "info")


if __name__ == "__main__":
    main()
