"""Image clicks (`embed_image`, `segment_image`) behind the HTTP routes, the CLI and the
in-process SDK; segment-everything and video sessions use its `scope` / `image_for` too.

Request lifecycle, in order:
  1. resolve the model id, load the model         (registry, runtime pool) -> `Scope`
  2. load pixels, or find the stored image id     (media.decode / store.for_id)
  3. embed once per image, on the embed lane      (store.for_pixels single-flight -> runtime.embed)
  4. decode, one call per prompt length, click lane (prompts -> decoding -> runtime.decode)
  5. pick the best mask, format it                (media.postprocess)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, Unavailable
from sam2serve.image.decoding import (
    check_mask_budget,
    clamped_low_res,
    decode_best,
    full_logits,
    full_logits_stack,
)
from sam2serve.image.prompts import prompt_key, to_batch
from sam2serve.image.schema import (
    EmbedRequest,
    EmbedResponse,
    ImageInput,
    LocalEmbedRequest,
    Prediction,
    RleMask,
    SegmentRequest,
    SegmentResponse,
)
from sam2serve.media import postprocess
from sam2serve.media.decode import LoadedImage, load_image
from sam2serve.media.fetch import UrlFetcher
from sam2serve.registry import ModelSpec, resolve_model_id
from sam2serve.runtime.base import Features, PromptBatch, Runtime
from sam2serve.runtime.pool import ModelPool
from sam2serve.scheduling.batching import MicroBatcher
from sam2serve.scheduling.lanes import Lane
from sam2serve.scheduling.priority import worker_init
from sam2serve.store.store import FeatureStore, Scope, StoredImage


@dataclass(frozen=True)
class BinaryResult:
    """format=binary: an .npz body (masks: (N, H, W) logits, low_res_masks: (N, m, m))."""

    content: bytes
    media_type: str = "application/octet-stream"


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

    async def aclose(self) -> None:
        self.embed_lane.shutdown()
        self.click_lane.shutdown()
        self.decode_lane.shutdown()
        await self.fetcher.aclose()
        await self.store.aclose()

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
            pixels = await self.load(request.image)
        scope = await self.scope(namespace, spec)
        got = await self.image_for(scope, request.image_id, pixels)
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
        spec = self.spec_for(request.sam2_version_id)
        if pixels is None and request.image is not None:
            pixels = await self.load(request.image)
        scope = await self.scope(namespace, spec)
        got = await self.image_for(scope, request.image_id, pixels)
        runtime = scope.runtime
        prompts = request.prompt_list()
        keys = [prompt_key(p) for p in prompts]
        batch = to_batch(prompts)
        if request.mask_input is not None:
            masks = _parse_mask_input(request.mask_input, len(batch), runtime.low_res_size)
            batch = PromptBatch(batch.coords, batch.labels, masks, None)
        elif request.load_logits_from_cache and keys:
            loaded = await self.store.load_logits(scope, got, keys)
            if loaded is not None:
                batch = PromptBatch(batch.coords, batch.labels, loaded[0], loaded[1])

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
            await self.store.save_logits(scope, got, keys, low_res)
        if isinstance(result, BinaryResult):
            return result
        return SegmentResponse(predictions=result, time=time.perf_counter() - started)

    # -- steps -----------------------------------------------------------------------

    async def scope(self, namespace: str, spec: ModelSpec) -> Scope:
        """`spec`'s model, loaded, for this namespace."""
        return Scope(namespace, spec, await self.pool.get(spec))

    async def image_for(
        self, scope: Scope, image_id: str | None, pixels: LoadedImage | None
    ) -> StoredImage:
        """The features of a request's image: `pixels` are embedded once and kept under
        `image_id` (default: their content hash); without pixels, the stored `image_id`
        (this replica, then the shared tier). Raises NotInCache for an unknown id.
        """
        if pixels is None:
            assert image_id is not None  # request validation guarantees one of them
            return await self.store.for_id(scope, image_id)
        rgb = pixels.rgb
        batcher = self._batcher(scope.spec.model_id, scope.runtime)

        async def embed() -> Features:
            if batcher is not None:
                return await batcher.submit(rgb)
            return await self.embed_lane.run(scope.runtime.embed, rgb)

        return await self.store.for_pixels(scope, pixels.content_hash, image_id, embed)

    async def load(self, image: ImageInput) -> LoadedImage:
        """A request's image (base64 or URL) decoded to RGB, on the decode lane."""
        return await load_image(
            image.type,
            image.value,
            settings=self.settings,
            fetcher=self.fetcher,
            run=self.decode_lane.run,
        )

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
