"""Every use case built from `Settings`, once: the one place that wires registry, device,
runtime factory, model pool, feature store (and its Redis tier) and the services on top.

The HTTP app, the in-process Segmenter, the CLI and the Ray Serve app all take what
`build_services` returns; none of them constructs a service of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sam2serve.config import Settings
from sam2serve.everything.service import EverythingService
from sam2serve.image.service import ImageService
from sam2serve.label_studio.service import LabelStudioBackend
from sam2serve.registry import ModelSpec, all_specs
from sam2serve.runtime.factory import runtime_factory, sam3_factory
from sam2serve.runtime.pool import ModelPool, pick_device
from sam2serve.sam3.config import Sam3Settings
from sam2serve.sam3.service import Sam3Service
from sam2serve.store.store import FeatureStore
from sam2serve.video.config import VideoSettings
from sam2serve.video.service import VideoService

if TYPE_CHECKING:
    from sam2serve.store.sharing import RedisSharing

#: The models a server knows when `build_services` is given no registry: both families.
REGISTRY: dict[str, ModelSpec] = all_specs()

#: Cache namespace of callers without an API key (a server with no keys configured, and
#: the in-process Segmenter); each key gets its own namespace (see `api.auth`).
PUBLIC_NAMESPACE = "public"


@dataclass
class Services:
    """The use cases of one process, sharing one model pool, feature store and lanes."""

    images: ImageService
    everything: EverythingService
    video: VideoService
    sam3: Sam3Service
    #: the Label Studio ML backend, over `images`, `video` and `sam3` (built from them)
    label_studio: LabelStudioBackend = field(init=False)
    closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.label_studio = LabelStudioBackend(self.images, self.video, self.sam3)

    @property
    def settings(self) -> Settings:
        return self.images.settings

    async def aclose(self) -> None:
        """Close video sessions, lanes, the fetcher and the Redis connection. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.video.close()
        await self.images.aclose()


def build_services(
    settings: Settings,
    registry: dict[str, ModelSpec] | None = None,
    *,
    video_settings: VideoSettings | None = None,
    sam3_settings: Sam3Settings | None = None,
    background_prepare: bool = False,
) -> Services:
    """Every service on `settings` (device, runtime, pool size, store, Redis tier) over
    `registry` (default: the built-in models of both families, SAM 2 and SAM 3; tests add
    tiny architectures). Call it on the event loop that will run the services (their locks
    and queues belong to it).

    background_prepare: a model whose fast runtime is not exported yet serves on the exact
    torch path at once while the export runs in the background (servers); without it the
    first load waits for the export (one-shot CLI runs, which would not live to finish it).
    video_settings: default `VideoSettings()` (the `SAM2SERVE_VIDEO_*` variables).
    sam3_settings: default `Sam3Settings()` (the `SAM2SERVE_SAM3_*` variables)."""
    pool = ModelPool(
        settings.weights_dir,
        pick_device(settings.device),
        allow_download=settings.allow_download,
        max_models=settings.max_models,
        factory=runtime_factory(settings, background=background_prepare),
        sam3_factory=sam3_factory(settings),
    )
    store = FeatureStore.from_settings(settings, redis_sharing(settings))
    images = ImageService(settings, registry or REGISTRY, pool, store=store)
    video = VideoService(images, video_settings or VideoSettings())
    return Services(
        images=images,
        everything=EverythingService(images),
        video=video,
        sam3=Sam3Service(images, sam3_settings or Sam3Settings()),
    )


def redis_sharing(settings: Settings) -> RedisSharing | None:
    """Features shared through the Redis tier of `SAM2SERVE_REDIS_URL`, or None (the
    default: this process only)."""
    if not settings.redis_url:
        return None
    from sam2serve.store.redis_tier import SharedTier  # redis-py only where the tier is on
    from sam2serve.store.sharing import RedisSharing

    tier = SharedTier(
        settings.redis_url,
        ttl_s=settings.redis_ttl_s,
        timeout_s=settings.redis_timeout_s,
        retry_s=settings.redis_retry_s,
        lock_s=settings.redis_lock_s,
    )
    return RedisSharing(tier, settings.weights_dir)
