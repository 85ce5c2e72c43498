"""Image clicks (`embed_image`, `segment_image`) behind the HTTP routes, the CLI and the
in-process SDK; segment-everything and video sessions use its model pool, lanes and store.

A segment request, in order (each step's module in brackets). Every budget decidable from
the request and the image header (prompts, mask_input, mask budget = prompts x header
pixels, pixel cap) is refused before any pixel is decoded or embedded.
  1. its prompts as one padded batch, mask_input checked      (prompts)
  2. the model id resolved                                    (registry)
  3. its image decoded, on the decode lane                    (media.decode)
  4. the model loaded; the features, embedded once or by id   (runtime pool; store)
  5. on the click lane: mask budget, one decoder call per token count, best mask, the
     answer in the request's format                           (decoding -> runtime, postprocess)
  6. the low-res logits saved for refinement, when asked      (store)
"""

from __future__ import annotations

import functools
import time

from sam2serve.config import Settings
from sam2serve.errors import Unavailable
from sam2serve.image.decoding import check_mask_budget, click
from sam2serve.image.prompts import request_batch
from sam2serve.image.schema import (
    EmbedRequest,
    EmbedResponse,
    ImageInput,
    LocalEmbedRequest,
    SegmentRequest,
    SegmentResponse,
)
from sam2serve.media.decode import HeaderCheck, LoadedImage, load_image
from sam2serve.media.fetch import UrlFetcher
from sam2serve.registry import SAM3_REGISTRY, Models, ModelSpec
from sam2serve.runtime.pool import ModelPool
from sam2serve.scheduling.batching import Embedders
from sam2serve.scheduling.lanes import Lane
from sam2serve.scheduling.priority import worker_init
from sam2serve.store.store import FeatureStore, Scope
from sam2serve.wire import BinaryResult

__all__ = ["BinaryResult", "ImageService"]


class ImageService:
    def __init__(
        self,
        settings: Settings,
        registry: dict[str, ModelSpec],
        pool: ModelPool,
        *,
        store: FeatureStore,
        fetcher: UrlFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.store = store
        self.fetcher = fetcher or UrlFetcher(settings)
        # embeds and segment-everything run below the clicks' CPU priority; with API keys,
        # one key may have at most its share of the queue waiting (lanes are fair per key)
        self.embed_lane = Lane(
            "embed",
            1,
            settings.embed_queue,
            retry_after_s=2.0,
            initializer=worker_init(settings.embed_nice),
            max_waiting_per_tenant=settings.embed_queue_per_key if settings.api_keys else 0,
            tenant_setting="SAM2SERVE_EMBED_QUEUE_PER_KEY",
        )
        self.click_lane = Lane("click", 1, settings.click_queue, retry_after_s=0.5)
        # image decodes (a 36 MP PNG takes ~1 s of CPU) also run below the clicks; requests
        # carrying an image are admitted first (api/admission.py), so this queue never refuses
        self.decode_lane = Lane(
            "decode",
            2,
            settings.embed_queue + 1,
            retry_after_s=2.0,
            initializer=worker_init(settings.embed_nice),
        )
        self.embedders = Embedders(
            self.embed_lane,
            batch_size=settings.embed_batch_size,
            window_s=settings.embed_batch_window_ms / 1000,
            queue=settings.embed_queue,
        )
        # SAM 3 ids resolve in their own registry (the registry's SAM 3 specs, else the
        # built-in ones): a SAM 2 id never names a SAM 3 model or the reverse
        sam3 = {k: v for k, v in registry.items() if v.family == "sam3"} or dict(SAM3_REGISTRY)
        self.models = Models(
            registry,
            settings.default_model,
            settings.alias_family,
            sam3_registry=sam3,
            sam3_default=settings.sam3_model,
        )

    async def aclose(self) -> None:
        self.embed_lane.shutdown()
        self.click_lane.shutdown()
        self.decode_lane.shutdown()
        await self.fetcher.aclose()
        await self.store.aclose()

    def spec_for(self, requested: str | None) -> ModelSpec:
        """The requested model's spec (None: the default); 400 listing the valid ids."""
        return self.models.resolve(requested)

    async def embed(
        self,
        request: EmbedRequest | LocalEmbedRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> EmbedResponse:
        """Embed an image once (cached by content) and answer its image_id.

        `pixels`: an image already decoded in this process (the in-process Segmenter); then
        `request` carries no image of its own.
        """
        started = time.perf_counter()
        spec = self.spec_for(request.sam2_version_id)
        if pixels is None:
            assert isinstance(request, EmbedRequest)  # only pixel calls come without an image
            pixels = await self.load(request.image, namespace)
        scope = await self.scope(namespace, spec)
        got = await self.store.features(scope, request.image_id, pixels)
        limit = self.store.max_feature_bytes
        if got.features.nbytes > limit:  # an id that is gone already is no use
            raise Unavailable(
                f"this image's embedding is {got.features.nbytes} bytes, over the embedding "
                f"cache budget of {limit} bytes, so its image_id cannot be kept: "
                "raise SAM2SERVE_CACHE_BYTES, or send the image with each segment_image request",
                field="image",
            )
        return EmbedResponse(image_id=got.image_id, time=time.perf_counter() - started)

    async def segment(
        self, request: SegmentRequest, namespace: str, *, pixels: LoadedImage | None = None
    ) -> SegmentResponse | BinaryResult:
        """Masks for the request's prompts, one per prompt (the best of C when multimask).

        `pixels`: an image already decoded in this process, used instead of `request.image`
        (the in-process Segmenter); it is cached under `request.image_id`.
        """
        started = time.perf_counter()
        batch, keys = request_batch(request)  # bad prompts / mask_input: 400 before image work
        spec = self.models.resolve(request.sam2_version_id)
        budget = self.settings.max_mask_pixels

        def mask_budget(width: int, height: int) -> None:  # 413 before decode or embed
            check_mask_budget(len(batch), (height, width), budget)

        if pixels is None and request.image is not None:
            pixels = await self.load(request.image, namespace, check_header=mask_budget)
        elif pixels is not None:
            mask_budget(pixels.hw[1], pixels.hw[0])
        scope = await self.scope(namespace, spec)
        got = await self.store.features(scope, request.image_id, pixels)
        if request.load_logits_from_cache and batch.mask_input is None and keys:
            batch = batch.with_masks(await self.store.load_logits(scope, got, keys))
        result, low_res = await self.click_lane.run(
            click, scope.runtime, got.features, batch, request, budget, tenant=namespace
        )
        if request.save_logits_to_cache and keys:
            await self.store.save_logits(scope, got, keys, low_res)
        if isinstance(result, BinaryResult):
            return result
        return SegmentResponse(predictions=result, time=time.perf_counter() - started)

    # -- steps -----------------------------------------------------------------------

    async def scope(self, namespace: str, spec: ModelSpec) -> Scope:
        """`spec`'s model, loaded, for this namespace, with how it embeds (batched or not)."""
        runtime = await self.pool.get(spec)
        embed = self.embedders.for_model(spec.model_id, runtime, namespace)
        return Scope(namespace, spec, runtime, embed)

    async def load(
        self, image: ImageInput, namespace: str = "", *, check_header: HeaderCheck | None = None
    ) -> LoadedImage:
        """A request's image (base64 or URL) decoded to RGB, on the decode lane (queued under
        `namespace`). `check_header(width, height)`: the request's own budgets, checked from
        the file header before any pixel is decoded (the pixel cap always is)."""
        return await load_image(
            image.type,
            image.value,
            settings=self.settings,
            fetcher=self.fetcher,
            run=functools.partial(self.decode_lane.run, tenant=namespace),
            check_header=check_header,
        )
