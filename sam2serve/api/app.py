"""The FastAPI application: wiring, lifespan, error mapping and request metrics."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sam2serve import __version__
from sam2serve.api.admission import image_admission
from sam2serve.api.everything_routes import router as everything_router
from sam2serve.api.guard import RequestGuard
from sam2serve.api.image_routes import router
from sam2serve.api.label_studio_routes import router as label_studio_router
from sam2serve.api.metrics import Metrics
from sam2serve.api.openapi import install as install_openapi
from sam2serve.api.readiness import start_preload
from sam2serve.api.sam3_routes import router as sam3_router
from sam2serve.api.video_routes import router as video_router
from sam2serve.config import Settings
from sam2serve.errors import ServiceError
from sam2serve.wiring import Services, build_services

log = logging.getLogger("sam2serve")
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The HTTP app over `services` (default: built from `settings`, as `serve` does)."""
    settings = settings or Settings()
    services = services or build_services(settings, background_prepare=True)
    service = services.images

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            start_preload(app)
        yield
        app.state.draining = True
        if app.state.preload_task is not None:
            app.state.preload_task.cancel()
        await services.aclose()

    app = FastAPI(
        title="sam2serve",
        version=__version__,
        description=(
            "Segment Anything 2 and 3 over HTTP, compatible with Roboflow's /sam2 and /sam3 "
            "endpoints."
        ),
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.metrics = Metrics()
    app.state.metrics.watch(service)
    app.state.replica = settings.replica_name or f"{socket.gethostname()}-{os.getpid()}"
    app.state.draining = False
    app.state.preloading = False
    app.state.preload_task = None
    app.state.load_failure = None  # why the default model could not be loaded (readiness)
    app.state.admission = image_admission(service)
    app.include_router(router)
    app.include_router(everything_router)
    app.include_router(video_router)
    app.include_router(sam3_router)
    app.include_router(label_studio_router)
    _install_error_handlers(app)
    # request ids, replica header, JSON 500s, metrics, access log
    app.add_middleware(RequestGuard, replica=app.state.replica)
    install_openapi(app)  # $refs that resolve, error answers, examples

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
        retry_after = getattr(exc, "retry_after", None)  # Unavailable, TooManyRequests
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, round(retry_after)))
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def parameter_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # path and query parameters (the routes validate their JSON bodies themselves)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query"))
        message = f"{where}: {first.get('msg', 'invalid value')}"
        return JSONResponse({"message": message, "field": where}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}; see /docs for the API"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        return JSONResponse({"message": message}, status_code=exc.status_code, headers=exc.headers)
