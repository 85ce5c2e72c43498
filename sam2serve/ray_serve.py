"""sam2serve as a Ray Serve application: the same FastAPI app, N replicas behind Ray's proxy.

Each replica builds the app exactly as `sam2serve serve` does (settings from the
`SAM2SERVE_*` environment, which the Serve config's `runtime_env.env_vars` sets), loads the
default model before it takes traffic, and answers Serve's health check from the same
state as `/readyz`. Point every replica at one Redis (`SAM2SERVE_REDIS_URL`) so a click can
land on any replica; without it each replica has its own cache and an id-only click on
another replica gets 404 "send the image" (the SDK then re-sends once). Requests that carry
the affinity header `X-Sam2serve-Image-Id` are routed by image id (`sam2serve.ray_router`),
so an image's clicks stay on the replica that embedded it; the others by load, as by default.

Run (see docs/scaling.md):

    ray start --head
    serve run deploy/serve_config.yaml          # or: serve deploy deploy/serve_config.yaml

`app_builder` is the config's `import_path`; its `args` are `SAM2ServeArgs`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from sam2serve.api.app import create_app
from sam2serve.api.readiness import load_failure
from sam2serve.config import Settings
from sam2serve.errors import ServiceError
from sam2serve.registry import REGISTRY, ModelSpec
from sam2serve.wiring import build_services

log = logging.getLogger("sam2serve.ray")

#: the deployment's request router: image affinity on X-Sam2serve-Image-Id (ray_router.py)
AFFINITY_ROUTER = "sam2serve.ray_router:ImageAffinityRouter"


class SAM2ServeArgs(BaseModel):
    """`args:` of the Serve config's application entry."""

    preload: bool = True  # load the default model before the replica takes traffic
    # "module:function" returning the model registry (dict of id -> ModelSpec); empty: the
    # built-in models. Tests name sam2serve.testing:registry_with_test_model (a tiny model).
    registry: str = ""


@serve.deployment(
    name="sam2serve",
    num_replicas=2,
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=32,
    health_check_period_s=5,
    health_check_timeout_s=10,
    graceful_shutdown_timeout_s=20,
    request_router_config=RequestRouterConfig(request_router_class=AFFINITY_ROUTER),
)
@serve.ingress()
class Sam2Deployment:
    """One replica: the FastAPI app of `sam2serve.api.app.create_app`."""

    async def __init__(self, preload: bool = True, registry: str = "") -> None:
        context = serve.get_replica_context()
        settings = Settings(replica_name=f"{context.deployment}#{context.replica_tag}")
        self.services = build_services(settings, _registry(registry))
        self.fastapi_app = create_app(settings, self.services)
        if preload:
            images = self.services.images
            try:
                await images.pool.get(images.spec_for(None))
            except ServiceError as exc:  # weights missing: /readyz and each request say so
                log.warning("preload failed: %s", exc.message)
                self.fastapi_app.state.load_failure = load_failure(images, exc)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.fastapi_app

    async def check_health(self) -> None:
        """Serve's health check is liveness, not /readyz: unhealthy only while draining.
        Missing weights keep the replica healthy (restarting it cannot bring them; /readyz
        answers 503 with which file to place where), and so does a Redis outage (it serves
        local-only; /readyz's detail says so)."""
        if self.fastapi_app.state.draining:
            raise RuntimeError("draining")
        await self.services.images.store.probe()


def app_builder(args: dict[str, Any]) -> Application:
    """`import_path: sam2serve.ray_serve:app_builder` in a Serve config."""
    parsed = SAM2ServeArgs.model_validate(args or {})
    return Sam2Deployment.bind(preload=parsed.preload, registry=parsed.registry)


def _registry(path: str) -> dict[str, ModelSpec]:
    """The registry named by `path` ("module:function"), or the built-in one."""
    if not path:
        return REGISTRY
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"registry {path!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)()
