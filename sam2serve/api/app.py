"""The FastAPI application: wiring, lifespan, error mapping and request metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sam2serve import __version__
from sam2serve.api.metrics import Metrics
from sam2serve.api.routes import router
from sam2serve.config import Settings
from sam2serve.errors import ServiceError, Unavailable
from sam2serve.registry import REGISTRY, ModelSpec
from sam2serve.runtime.openvino_runtime import factory_for
from sam2serve.runtime.pool import ModelPool, pick_device
from sam2serve.runtime.preparing import wait_prepared
from sam2serve.service import Sam2Service

log = logging.getLogger("sam2serve")
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def build_service(
    settings: Settings,
    registry: dict[str, ModelSpec] | None = None,
    *,
    background_prepare: bool = False,
) -> Sam2Service:
    """background_prepare: a model whose fast runtime is not exported yet serves on the exact
    torch path at once while the export runs in the background (servers); without it the
    first load waits for the export (one-shot CLI runs, which would not live to finish it)."""
    registry = registry or REGISTRY
    pool = ModelPool(
        settings.weights_dir,
        pick_device(settings.device),
        allow_download=settings.allow_download,
        max_models=settings.max_models,
        factory=factory_for(
            settings.runtime,
            settings.runtime_cache_dir,
            settings.embed_threads,
            settings.decode_threads,
            background=background_prepare,
        ),
    )
    return Sam2Service(settings, registry, pool)


def create_app(settings: Settings | None = None, service: Sam2Service | None = None) -> FastAPI:
    settings = settings or Settings()
    service = service or build_service(settings, background_prepare=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        preload: asyncio.Task | None = None
        if settings.preload:
            app.state.preloading = True

            async def _preload() -> None:
                spec = service.spec_for(None)
                app.state.preload_detail = f"loading the default model {spec.model_id}"
                try:
                    runtime = await service.pool.get(spec)
                    await wait_prepared(runtime, app.state)
                except ServiceError as exc:
                    log.warning("preload failed: %s", exc.message)
                finally:
                    app.state.preloading = False

            preload = asyncio.create_task(_preload())
        yield
        app.state.draining = True
        if preload is not None:
            preload.cancel()
        await service.aclose()

    app = FastAPI(
        title="sam2serve",
        version=__version__,
        description="Segment Anything 2 over HTTP, compatible with Roboflow's /sam2 endpoints.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = Metrics()
    app.state.draining = False
    app.state.preloading = False
    app.include_router(router)
    _install_error_handlers(app)
    _install_metrics(app)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> Response:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return FileResponse(index)
        return RedirectResponse("/docs")

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Unavailable) and exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"message": f"{where}: {first['msg']}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return JSONResponse({"message": message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(
            {"message": "internal server error; the server log has the details"},
            status_code=500,
        )


def _install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def record(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", "unmatched")
        metrics: Metrics = request.app.state.metrics
        metrics.requests.labels(label, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - started)
        # access log without the query string: it may carry api_key
        log.info("%s %s %d", request.method, request.url.path, response.status_code)
        return response
