"""Building a `Sam2Service` from `Settings`: the one place that wires registry, device,
runtime factory, model pool and the shared tier together. The HTTP app and the in-process
Segmenter both call `build_service`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sam2serve.config import Settings
from sam2serve.registry import REGISTRY, ModelSpec
from sam2serve.runtime.factory import runtime_factory
from sam2serve.runtime.pool import ModelPool, pick_device
from sam2serve.image.service import Sam2Service

if TYPE_CHECKING:
    from sam2serve.store.redis_tier import SharedTier

#: Cache namespace of callers without an API key (a server with no keys configured, and
#: the in-process Segmenter); each key gets its own namespace (see `api.auth`).
PUBLIC_NAMESPACE = "public"


def build_service(
    settings: Settings,
    registry: dict[str, ModelSpec] | None = None,
    *,
    background_prepare: bool = False,
) -> Sam2Service:
    """A service on `settings` (device, runtime, pool size, shared tier) over `registry`
    (default: the built-in models; tests add a tiny architecture).

    background_prepare: a model whose fast runtime is not exported yet serves on the exact
    torch path at once while the export runs in the background (servers); without it the
    first load waits for the export (one-shot CLI runs, which would not live to finish it)."""
    pool = ModelPool(
        settings.weights_dir,
        pick_device(settings.device),
        allow_download=settings.allow_download,
        max_models=settings.max_models,
        factory=runtime_factory(settings, background=background_prepare),
    )
    return Sam2Service(settings, registry or REGISTRY, pool, shared=shared_tier(settings))


def shared_tier(settings: Settings) -> SharedTier | None:
    """The Redis tier of `SAM2SERVE_REDIS_URL`, or None (the default: local cache only)."""
    if not settings.redis_url:
        return None
    from sam2serve.store.redis_tier import SharedTier  # redis-py only where the tier is on

    return SharedTier(
        settings.redis_url,
        settings.weights_dir,
        ttl_s=settings.redis_ttl_s,
        timeout_s=settings.redis_timeout_s,
        retry_s=settings.redis_retry_s,
        lock_s=settings.redis_lock_s,
    )
