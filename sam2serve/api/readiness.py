"""Readiness of the default model: is this replica able to serve a segment request now?

`/readyz` (what a load balancer, Kubernetes or the container HEALTHCHECK asks) answers 503
with the reason until the default model is usable: its checkpoint is missing (the message
of the weights 503: which file, where, how to get it), or loading it failed and nothing has
changed since. Liveness (`/healthz`, Ray Serve's health check) does not ask this: a restart
cannot bring weights.

When the checkpoint file changes after a failure (an operator placed it), the server loads
the model again in the background (`/readyz` says `loading`, then ready).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from sam2serve.errors import ServiceError
from sam2serve.image.service import ImageService
from sam2serve.runtime.preparing import wait_prepared
from sam2serve.runtime.weights import checkpoint_path, missing_weights_message

log = logging.getLogger("sam2serve")


@dataclass(frozen=True)
class LoadFailure:
    """The default model could not be loaded: why, and the checkpoint file as it was then."""

    message: str
    file: tuple[int, int] | None  # (size, mtime ns) of the checkpoint, None when missing


def file_signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of `path`, None when it is not a file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if path.is_file() else None


def load_failure(service: ImageService, exc: ServiceError) -> LoadFailure:
    """Record why loading the default model failed, with the checkpoint's state now."""
    spec = service.spec_for(None)
    path = checkpoint_path(spec, service.pool.weights_dir)
    return LoadFailure(exc.message, file_signature(path))


def default_model_problem(
    service: ImageService, failure: LoadFailure | None
) -> tuple[dict[str, Any] | None, bool]:
    """(the 503 body saying why the default model cannot serve, or None when it can; whether
    the checkpoint changed since `failure`, so loading it again may work)."""
    spec = service.spec_for(None)
    if spec.model_id in service.pool.loaded:
        return None, False
    weights_dir = service.pool.weights_dir
    now = file_signature(checkpoint_path(spec, weights_dir))
    if failure is not None and failure.file == now:
        status = "weights_missing" if now is None else "model_unavailable"
        return {"status": status, "message": failure.message}, False
    changed = failure is not None
    if now is None:
        reason = "file not found"
        if service.pool.allow_download:
            reason += "; it is downloaded from its official URL on first use, where reachable"
        message = missing_weights_message(spec, weights_dir, reason)
        return {"status": "weights_missing", "message": message}, changed
    return None, changed


def start_preload(app: FastAPI) -> None:
    """Load (and prepare) the default model in the background; `/readyz` says what it is
    doing meanwhile, and why the model cannot serve if it fails (`app.state.load_failure`)."""
    service: ImageService = app.state.services.images
    app.state.preloading = True

    async def _preload() -> None:
        spec = service.spec_for(None)
        app.state.preload_detail = f"loading the default model {spec.model_id}"
        try:
            runtime = await service.pool.get(spec)
            await wait_prepared(runtime, app.state)
            app.state.load_failure = None
        except ServiceError as exc:
            log.warning("preload failed: %s", exc.message)
            app.state.load_failure = load_failure(service, exc)
        finally:
            app.state.preloading = False

    app.state.preload_task = asyncio.create_task(_preload())
