"""The one orchestrator behind the HTTP routes, the CLI and the in-process SDK.

Request lifecycle, in order:
  1. resolve the model id                        (registry)
  2. load pixels, or find the cached image id    (images / cache)
  3. embed once per image, on the embed lane     (cache single-flight -> runtime.embed)
  4. decode, one call per prompt length, click lane (prompts -> decoding -> runtime.decode)
  5. pick the best mask, format it               (postprocess)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sam2serve import postprocess
from sam2serve.batching import MicroBatcher
from sam2serve.cache import EmbeddingCache, EntryKey, IdKey
from sam2serve.config import Settings
from sam2serve.decoding import (
    check_mask_budget,
    clamped_low_res,
    decode_best,
    full_logits,
    full_logits_stack,
)
from sam2serve.errors import BadRequest, NotInCache, Unavailable
from sam2serve.fetch import UrlFetcher
from sam2serve.image_decode import LoadedImage, load_image
from sam2serve.lanes import Lane
from sam2serve.logits_cache import LogitsCache
from sam2serve.prompt_batch import prompt_key, to_batch
from sam2serve.registry import ModelSpec, resolve_model_id
from sam2serve.runtime.base import Features, PromptBatch, Runtime
from sam2serve.runtime.pool import ModelPool
from sam2serve.schema import (
    EmbedRequest,
    EmbedResponse,
    ImageInput,
    LocalEmbedRequest,
    Prediction,
    RleMask,
    SegmentRequest,
    SegmentResponse,
)
from sam2serve.worker_priority import worker_init

if TYPE_CHECKING:
    from sam2serve.shared_tier import SharedTier


@dataclass(frozen=True)
class BinaryResult:
    """format=binary: an .npz body (masks: (N, H, W) logits, low_res_masks: (N, m, m))."""

    content: bytes
    media_type: str = "application/octet-stream"


@dataclass
class _Image:
    entry: EntryKey
    image_id: str
    features: Features
    cached: bool


class Sam2Service:
    def __init__(
        self,
        settings: Settings,
        registry: dict[str, ModelSpec],
        pool: ModelPool,
        *,
        fetcher: UrlFetcher | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.fetcher = fetcher or UrlFetcher(settings)
        # one byte budget for both caches: the logits take their share out of cache_bytes
        logits_bytes = settings.logits_budget_bytes
        self.cache = EmbeddingCache(settings.cache_bytes - logits_bytes)
        self.logits = LogitsCache(settings.logits_cache_entries, logits_bytes)
        # embeds and segment-everything run below the clicks' CPU priority
        self.embed_lane = Lane(
            "embed",
            1,
            settings.embed_queue,
            retry_after_s=2.0,
            initializer=worker_init(settings.embed_nice),
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
        self._batchers: dict[str, MicroBatcher[np.ndarray, Features]] = {}
        self.shared = shared  # the Redis tier shared by replicas; None: local cache only

    async def aclose(self) -> None:
        self.embed_lane.shutdown()
        self.click_lane.shutdown()
        self.decode_lane.shutdown()
        await self.fetcher.aclose()
        if self.shared is not None:
            await self.shared.aclose()

    def spec_for(self, requested: str | None) -> ModelSpec:
        return resolve_model_id(
            requested or self.settings.default_model,
            registry=self.registry,
            alias_family=self.settings.alias_family,
        )

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
            pixels = await self._load(request.image)
        got = await self._embed(spec, namespace, pixels, request.image_id)
        if got.features.nbytes > self.cache.max_bytes:  # an id that is gone already is no use
            raise Unavailable(
                f"this image's embedding is {got.features.nbytes} bytes, over the embedding "
                f"cache budget of {self.cache.max_bytes} bytes, so its image_id cannot be kept: "
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
        spec = self.spec_for(request.sam2_version_id)
        got = await self._image_for_segment(spec, namespace, request, pixels)
        runtime = await self.pool.get(spec)
        prompts = request.prompt_list()
        keys = [prompt_key(p) for p in prompts]
        if request.load_logits_from_cache and keys and self.shared is not None:
            ident = await self.shared.identity(spec, runtime)
            for saved_keys, saved in await self.shared.load_logits(
                namespace, ident, got.entry.content_hash, side=runtime.low_res_size
            ):
                self.logits.save(got.entry, saved_keys, saved)
        batch = self._with_mask_input(to_batch(prompts), request, runtime, got.entry, keys)

        hw = got.features.orig_hw
        check_mask_budget(len(batch), hw, self.settings.max_mask_pixels)

        def work() -> tuple[list[Prediction] | BinaryResult, np.ndarray]:
            chosen, scores = decode_best(runtime, got.features, batch, request.multimask_output)
            low_res = clamped_low_res(chosen)
            if request.format == "binary":
                full = full_logits_stack(runtime, chosen, hw)
                return BinaryResult(postprocess.encode_npz(full, low_res)), low_res
            predictions = [
                _prediction(logits > 0, float(score), request.format, request.polygon_holes)
                for logits, score in zip(full_logits(runtime, chosen, hw), scores, strict=True)
            ]
            return predictions, low_res

        result, low_res = await self.click_lane.run(work)
        if request.save_logits_to_cache and prompts:
            self.logits.save(got.entry, keys, low_res)
            if self.shared is not None:
                ident = await self.shared.identity(spec, runtime)
                await self.shared.save_logits(
                    namespace, ident, got.entry.content_hash, keys, low_res
                )
        if isinstance(result, BinaryResult):
            return result
        return SegmentResponse(predictions=result, time=time.perf_counter() - started)

    # -- steps -----------------------------------------------------------------------

    async def _load(self, image: ImageInput) -> LoadedImage:
        return await load_image(
            image.type,
            image.value,
            settings=self.settings,
            fetcher=self.fetcher,
            run=self.decode_lane.run,
        )

    async def _embed(
        self, spec: ModelSpec, namespace: str, image: LoadedImage, image_id: str | None
    ) -> _Image:
        runtime = await self.pool.get(spec)
        entry = EntryKey(namespace, spec.model_id, image.content_hash)
        image_id = image_id or image.content_hash

        batcher = self._batcher(spec.model_id, runtime)

        shared = self.shared
        ident = await shared.identity(spec, runtime) if shared is not None else None

        async def compute() -> Features:
            if shared is not None and ident is not None:
                found = await shared.wait_or_lock(
                    namespace, ident, entry.content_hash, runtime.device
                )
                if found is not None:
                    return found
            try:
                if batcher is not None:
                    features = await batcher.submit(image.rgb)
                else:
                    features = await self.embed_lane.run(runtime.embed, image.rgb)
            finally:
                if shared is not None and ident is not None:
                    await shared.unlock(namespace, ident, entry.content_hash)
            return features

        features, cached = await self.cache.get_or_compute(entry, image_id, compute)
        if shared is not None and ident is not None and features.nbytes <= self.cache.max_bytes:
            await shared.publish(namespace, ident, image_id, entry.content_hash, features)
        return _Image(entry, image_id, features, cached)

    def _batcher(self, model_id: str, runtime: Runtime) -> MicroBatcher | None:
        """The embed micro-batcher of this model, where batching is on and supported."""
        size = self.settings.embed_batch_size or (4 if runtime.device.type == "cuda" else 1)
        embed_batch = getattr(runtime, "embed_batch", None)
        if size <= 1 or embed_batch is None:
            return None
        batcher = self._batchers.get(model_id)
        if batcher is None or batcher.batch_fn != embed_batch:  # model reloaded
            batcher = MicroBatcher(
                embed_batch,
                self.embed_lane,
                max_batch=size,
                window_s=self.settings.embed_batch_window_ms / 1000,
                max_pending=size * max(1, self.settings.embed_queue),
            )
            self._batchers[model_id] = batcher
        return batcher

    async def features_for(
        self,
        spec: ModelSpec,
        namespace: str,
        image_id: str | None,
        *,
        image: ImageInput | None = None,
        pixels: LoadedImage | None = None,
    ) -> tuple[Features, LoadedImage | None]:
        """The features of a request's image: `pixels` (decoded in this process) or `image`
        (loaded here) are embedded once and cached under `image_id` (default: their content
        hash); with neither, the cached `image_id` (this replica, then the shared tier).

        Returns the features and the pixels, when the request had any (None for an id).
        Raises NotInCache for an unknown id.
        """
        if pixels is None and image is not None:
            pixels = await self._load(image)
        if pixels is not None:
            got = await self._embed(spec, namespace, pixels, image_id)
        else:
            assert image_id is not None  # request validation guarantees one of them
            got = await self._cached(spec, namespace, image_id)
        return got.features, pixels

    async def _image_for_segment(
        self,
        spec: ModelSpec,
        namespace: str,
        request: SegmentRequest,
        pixels: LoadedImage | None,
    ) -> _Image:
        if pixels is not None:
            return await self._embed(spec, namespace, pixels, request.image_id)
        if request.image is None:
            assert request.image_id is not None  # request validation guarantees one of them
            return await self._cached(spec, namespace, request.image_id)
        image = await self._load(request.image)
        return await self._embed(spec, namespace, image, request.image_id)

    async def _cached(self, spec: ModelSpec, namespace: str, image_id: str) -> _Image:
        found = self.cache.lookup(IdKey(namespace, spec.model_id, image_id))
        if self.shared is not None:
            found = await self._shared_lookup(spec, namespace, image_id, found)
        if found is None:
            raise NotInCache(
                f"image_id {image_id!r} is not in cache for {spec.model_id}: "
                "send the image (embed_image, or `image` in this request)",
                field="image_id",
            )
        entry, features = found
        return _Image(entry, image_id, features, True)

    async def _shared_lookup(
        self,
        spec: ModelSpec,
        namespace: str,
        image_id: str,
        local: tuple[EntryKey, Features] | None,
    ) -> tuple[EntryKey, Features] | None:
        """Check an id against the shared binding (authoritative while Redis is up): fetch
        features this replica lacks; never answer with pixels the id is no longer bound to."""
        assert self.shared is not None
        from sam2serve.shared_tier import Binding  # (redis-py only where the tier is on)

        runtime = await self.pool.get(spec)
        ident = await self.shared.identity(spec, runtime)
        local_hash = local[0].content_hash if local is not None else None
        bound = await self.shared.binding(namespace, ident, image_id, local_hash)
        if bound is Binding.REFUSED:
            # Redis holds something under this id that this server never writes (junk,
            # another Redis type, another version's format). It is not "unknown": the id
            # may have been re-bound to other pixels elsewhere before the value was damaged,
            # so the local binding may be stale and does not stand either. Only "send the
            # image" is safe; the resend re-binds the id for every replica.
            return None
        if bound is None or bound == local_hash:
            return local  # unknown to Redis, or Redis down: the local answer stands
        features = await self.shared.features(namespace, ident, bound, runtime.device)
        if features is None:
            return None  # rebound elsewhere to pixels nobody can give us: send the image

        async def fetched() -> Features:
            return features

        entry = EntryKey(namespace, spec.model_id, bound)
        features, _ = await self.cache.get_or_compute(entry, image_id, fetched)
        return entry, features

    def _with_mask_input(
        self,
        batch: PromptBatch,
        request: SegmentRequest,
        runtime: Runtime,
        entry: EntryKey,
        keys: list,
    ) -> PromptBatch:
        m = runtime.low_res_size
        if request.mask_input is not None:
            masks = _parse_mask_input(request.mask_input, len(batch), m)
            return PromptBatch(batch.coords, batch.labels, masks, None)
        if request.load_logits_from_cache and keys:
            loaded = self.logits.load(entry, keys)
            if loaded is not None:
                return PromptBatch(batch.coords, batch.labels, loaded[0], loaded[1])
        return batch


def _parse_mask_input(raw: list, n_prompts: int, m: int) -> np.ndarray:
    """Accept (N, m, m), (N, 1, m, m), or one (m, m) / (1, m, m) mask broadcast to N."""
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadRequest(
            f"mask_input must be a numeric array of shape (N, {m}, {m}) with N = number of "
            "prompts (the low_res_masks of an earlier binary response)",
            field="mask_input",
        ) from exc
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 3 and arr.shape[0] == 1 and n_prompts > 1:
        arr = np.repeat(arr, n_prompts, axis=0)
    if arr.shape != (n_prompts, m, m) or not np.isfinite(arr).all():
        raise BadRequest(
            f"mask_input has shape {list(arr.shape)}; this model needs finite logits of shape "
            f"({n_prompts}, {m}, {m}): one {m}x{m} mask per prompt",
            field="mask_input",
        )
    return arr[:, None]


def _prediction(mask: np.ndarray, score: float, fmt: str, holes: bool) -> Prediction:
    if fmt == "rle":
        return Prediction(
            masks=RleMask(**postprocess.mask_to_rle(mask)), confidence=score, format="rle"
        )
    return Prediction(masks=postprocess.mask_to_polygons(mask, holes=holes), confidence=score)
