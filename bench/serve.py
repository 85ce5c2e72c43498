"""Serve with an explicit runtime, for benchmarks: `python -m bench.serve --runtime openvino`.

Same app and settings as `sam2serve serve` (SAM2SERVE_* environment), loopback only, but the
model pool is built with the chosen runtime factory. Once runtime selection is part of the
settings, `sam2serve serve` does the same and bench/run.py uses it by default.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn

from sam2serve.api.app import create_app
from sam2serve.config import Settings
from sam2serve.registry import REGISTRY
from sam2serve.runtime.openvino_runtime import RUNTIMES, factory_for
from sam2serve.runtime.pool import ModelPool, pick_device
from sam2serve.service import Sam2Service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--runtime", choices=RUNTIMES, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings(host="127.0.0.1", port=args.port)
    pool = ModelPool(
        settings.weights_dir,
        pick_device(settings.device),
        allow_download=settings.allow_download,
        max_models=settings.max_models,
        factory=factory_for(args.runtime, args.cache_dir),
    )
    service = Sam2Service(settings, REGISTRY, pool)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(create_app(settings, service), host="127.0.0.1", port=args.port, access_log=False)


if __name__ == "__main__":
    main()
