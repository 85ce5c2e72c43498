"""SAM 3 concept prompts behind the `/sam3` routes, the CLI and the in-process SDK.

It runs on the image use case's model pool, feature store and lanes (one cache, one set of
admission and lane bounds for both families). A concept request, in order:
  1. the model id resolved to a SAM 3 model                    (registry)
  2. its image decoded, on the decode lane; one mask must fit  (media.decode)
     the output-mask budget (refused from the header, before any pixel is decoded)
  3. the model loaded; the features, embedded once or by id    (runtime pool; store)
  4. the phrases' text embeddings: kept ones reused, new ones  (text_cache; embed lane)
     encoded in one call
  5. each prompt through the concept heads: one embed-lane job (runtime.concept)
     per prompt, so other work interleaves; an output kept for (concept_cache)
     this image, prompt and boxes is reused (a repeated prompt
     skips the fusion encoder and decoder), one in flight joined
  6. thresholds, cross-prompt NMS, the caps, the masks and the (selection; embed lane)
     answer's format, in one embed-lane job

Concept work runs on the embed lane (below the clicks' priority): on a CPU one prompt is
seconds of work, which must never sit in front of SAM 2 clicks.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2serve.errors import NotInCache, Unavailable
from sam2serve.everything.schema import EverythingResponse
from sam2serve.everything.service import segment_everything
from sam2serve.image.decoding import check_mask_budget
from sam2serve.image.prompts import request_batch
from sam2serve.image.schema import SegmentResponse
from sam2serve.image.service import ImageService
from sam2serve.media import postprocess
from sam2serve.media.decode import LoadedImage
from sam2serve.registry import SAM3_ALIASES, ModelSpec
from sam2serve.runtime.sam3_types import ConceptOutput, Sam3Features, TextEmbedding
from sam2serve.sam3.concept_cache import ConceptCache, ConceptKey
from sam2serve.sam3.config import Sam3Settings
from sam2serve.sam3.interactive import click_inst, inst_view
from sam2serve.sam3.schema import (
    ConceptSegmentRequest,
    ConceptSegmentResponse,
    LocalSam3EmbedRequest,
    PromptEcho,
    PromptResult,
    Sam3EmbedRequest,
    Sam3EmbedResponse,
    Sam3EverythingRequest,
    Sam3Limits,
    Sam3Prediction,
    Sam3Prompt,
    VisualSegmentRequest,
)
from sam2serve.sam3.selection import Candidate, candidates, max_masks_for, select
from sam2serve.sam3.text_cache import TextCache
from sam2serve.store.store import Scope, StoredImage
from sam2serve.wire import BinaryResult, RleMask

#: the phrase Meta's `Sam3Processor` encodes for a prompt made of boxes only
VISUAL_PHRASE = "visual"


@dataclass(frozen=True)
class PromptPlan:
    """One prompt as the runtime takes it: its phrase (None: boxes only), its boxes (N, 4)
    float32 absolute-pixel corners and labels (N,) bool (True: positive exemplar)."""

    phrase: str | None
    boxes_xyxy: np.ndarray
    labels: np.ndarray


def plan(prompt: Sam3Prompt) -> PromptPlan:
    """A request prompt -> the runtime's form (boxes as corners in pixels, labels as bools)."""
    boxes = [box.xyxy() for box in prompt.boxes or []]
    return PromptPlan(
        phrase=prompt.text,
        boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(prompt.labels(), dtype=bool),
    )


class Sam3Service:
    """SAM 3's embed and concept segmentation on the image use case's pool, store and lanes."""

    def __init__(self, images: ImageService, settings: Sam3Settings | None = None) -> None:
        self.images = images
        self.settings = settings or Sam3Settings()
        s = self.settings
        self.texts = TextCache(s.text_cache_entries, s.text_cache_bytes)
        self.concepts = ConceptCache(s.concept_cache_entries, s.concept_cache_bytes)
        # model id -> the runtime its kept phrases and outputs came from (weakly: an evicted
        # model is freed); another runtime under the id (a reload) starts with none
        self._source: dict[str, weakref.ref[Any]] = {}

    @property
    def limits(self) -> Sam3Limits:
        """The request caps, as validation context ``{"sam3_limits": ...}``."""
        s = self.settings
        return Sam3Limits(
            max_prompts=s.max_prompts,
            max_phrase_chars=s.max_phrase_chars,
            max_boxes_per_prompt=s.max_boxes_per_prompt,
            max_coordinate=self.images.settings.max_coordinate,
        )

    def describe(self) -> dict[str, Any]:
        """/info's `sam3`: its models, the request caps and the phrase cache."""
        s = self.settings
        models = self.images.models
        return {
            "models": list(models.sam3_registry),
            "default_model": models.sam3_default,
            "limits": {
                "max_prompts": s.max_prompts,
                "max_phrase_chars": s.max_phrase_chars,
                "max_boxes_per_prompt": s.max_boxes_per_prompt,
                "max_instances_per_prompt": s.max_instances_per_prompt,
                "max_mask_pixels": self.images.settings.max_mask_pixels,
            },
            "text_cache": self.texts.describe(),
            "concept_cache": self.concepts.describe(),
        }

    def spec_for(self, requested: str | None) -> ModelSpec:
        """The SAM 3 model a request names (None, or Roboflow's "sam3/sam3_final": the
        server's SAM 3 model); 400 listing the SAM 3 ids for anything else."""
        return resolve_sam3(self.images, requested)

    async def embed(
        self,
        request: Sam3EmbedRequest | LocalSam3EmbedRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> Sam3EmbedResponse:
        """Embed an image once (cached by content, bound to `image_id`) and answer its id.
        `pixels`: an image decoded in this process (then `request` carries none)."""
        started = time.perf_counter()
        spec = self.spec_for(request.model_id)
        if pixels is None:
            assert isinstance(request, Sam3EmbedRequest)  # only pixel calls come without one
            pixels = await self.images.load(request.image, namespace)
        got = (await self._features(namespace, spec, request.image_id, pixels)).stored
        limit = self.images.store.max_feature_bytes
        if got.features.nbytes > limit:  # an id that is gone already is no use
            raise Unavailable(
                f"this image's SAM 3 embedding is {got.features.nbytes} bytes, over the "
                f"embedding cache budget of {limit} bytes, so its image_id cannot be kept: "
                "raise SAM2SERVE_CACHE_BYTES, or send the image with each request",
                field="image",
            )
        return Sam3EmbedResponse(image_id=got.image_id, time=time.perf_counter() - started)

    async def concept_segment(
        self,
        request: ConceptSegmentRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> ConceptSegmentResponse:
        """Every instance of each prompt's concept (module docs for the steps)."""
        started = time.perf_counter()
        spec = self.spec_for(request.model_id)
        budget = self.images.settings.max_mask_pixels

        def one_mask_fits(width: int, height: int) -> None:  # 413 before decode or embed
            check_mask_budget(1, (height, width), budget)

        if pixels is None and request.image is not None:
            pixels = await self.images.load(request.image, namespace, check_header=one_mask_fits)
        elif pixels is not None:
            one_mask_fits(pixels.hw[1], pixels.hw[0])
        got = await self._features(namespace, spec, request.image_id, pixels)
        scope = got.scope
        features = got.stored.features
        plans = [plan(p) for p in request.prompts]
        self._check_runtime(scope)
        outs = await self._concepts(scope, got.stored, namespace, plans)
        lane = self.images.embed_lane
        results = await lane.run(
            self._answer, scope, features, outs, request, budget, tenant=namespace
        )
        return ConceptSegmentResponse(prompt_results=results, time=time.perf_counter() - started)

    async def visual_segment(
        self,
        request: VisualSegmentRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> SegmentResponse | BinaryResult:
        """Point/box prompts on SAM 3's instance-interactive predictor (Meta's `predict_inst`
        math): SAM 2's segment_image answer, one mask per prompt, on the click lane."""
        started = time.perf_counter()
        batch, keys = request_batch(request)  # bad prompts / mask_input: 400 before image work
        spec = self.spec_for(request.model_id)
        budget = self.images.settings.max_mask_pixels

        def mask_budget(width: int, height: int) -> None:  # 413 before decode or embed
            check_mask_budget(len(batch), (height, width), budget)

        if pixels is None and request.image is not None:
            pixels = await self.images.load(request.image, namespace, check_header=mask_budget)
        elif pixels is not None:
            mask_budget(pixels.hw[1], pixels.hw[0])
        got = await self._features(namespace, spec, request.image_id, pixels)
        scope, stored = got.scope, got.stored
        if request.load_logits_from_cache and batch.mask_input is None and keys:
            batch = batch.with_masks(await self.images.store.load_logits(scope, stored, keys))
        runtime = scope.runtime
        result, low_res = await self.images.click_lane.run(
            click_inst, runtime, stored.features, batch, request, budget, tenant=namespace
        )
        if request.save_logits_to_cache and keys:
            await self.images.store.save_logits(scope, stored, keys, low_res)
        if isinstance(result, BinaryResult):
            return result
        return SegmentResponse(predictions=result, time=time.perf_counter() - started)

    async def segment_everything(
        self,
        request: Sam3EverythingRequest,
        namespace: str,
        *,
        pixels: LoadedImage | None = None,
    ) -> EverythingResponse | BinaryResult:
        """Every object as a mask: segment everything's algorithm (Meta's automatic mask
        generator, same parameters and budgets) on SAM 3's instance predictor as
        `predict_inst` drives it (its own hole filling; `min_mask_region_area` acts in the
        generator's final clean-up)."""
        spec = self.spec_for(request.model_id)
        return await segment_everything(
            self.images,
            request,
            namespace,
            pixels=pixels,
            spec=spec,
            as_features=inst_view,
            predictor_regions=False,  # SAM 3's predictor post-processes as predict_inst does
        )

    # -- steps -----------------------------------------------------------------------

    async def _features(
        self, namespace: str, spec: ModelSpec, image_id: str | None, pixels: LoadedImage | None
    ) -> _Got:
        """The image's SAM 3 features from the store (embedded at most once), checked to be
        SAM 3's: an id bound under another family is never answered with them."""
        scope = await self.images.scope(namespace, spec)
        stored = await self.images.store.features(scope, image_id, pixels)
        if not isinstance(stored.features, Sam3Features):  # defence in depth: keys differ
            raise NotInCache(
                f"image_id {stored.image_id!r} is not a SAM 3 embedding: embed the image with "
                "/sam3/embed_image (SAM 2 and SAM 3 embeddings are kept apart)",
                field="image_id",
            )
        return _Got(scope, stored)

    def _check_runtime(self, scope: Scope) -> None:
        """Forget the model's kept phrases and outputs when its runtime is not the one they
        came from (a reload: other weights or precision, maybe)."""
        model_id = scope.spec.model_id
        source = self._source.get(model_id)
        if source is None or source() is not scope.runtime:
            self.texts.drop_model(model_id)
            self.concepts.drop_model(model_id)
            self._source[model_id] = weakref.ref(scope.runtime)

    async def _concepts(
        self, scope: Scope, stored: StoredImage, namespace: str, plans: list[PromptPlan]
    ) -> list[ConceptOutput]:
        """Each prompt's concept output: kept ones from the cache, ones another request is
        computing now from its task, the rest on the embed lane one prompt per job (each
        finishes and fills the cache even if this request goes away: others may wait)."""
        features = stored.features
        assert isinstance(features, Sam3Features)  # checked by `_features`
        precision = str(getattr(scope.runtime, "precision", type(scope.runtime).__name__))
        keys = [
            ConceptKey.of(stored.entry, precision, p.phrase, p.boxes_xyxy, p.labels) for p in plans
        ]
        found: dict[int, ConceptOutput] = {}
        for i, key in enumerate(keys):
            kept = self.concepts.get(key, features)
            if kept is not None:
                found[i] = kept
        todo = [i for i in range(len(plans)) if i not in found]
        if not todo:
            return [found[i] for i in range(len(plans))]
        texts = await self._text_embeddings(scope, namespace, [plans[i] for i in todo])
        outs: list[ConceptOutput] = []
        for i, (p, key) in enumerate(zip(plans, keys, strict=True)):
            # kept now, maybe by a request that finished while this one encoded its phrases
            kept = found[i] if i in found else self.concepts.get(key, features)
            if kept is not None:
                outs.append(kept)
                continue
            task = self.concepts.pending(key)
            if task is None:
                text = texts[p.phrase if p.phrase is not None else VISUAL_PHRASE]
                task = asyncio.get_running_loop().create_task(
                    self._concept(scope, features, key, p, text, namespace)
                )
                self.concepts.track(key, task)
            outs.append(await asyncio.shield(task))
        return outs

    async def _concept(
        self,
        scope: Scope,
        features: Sam3Features,
        key: ConceptKey,
        p: PromptPlan,
        text: TextEmbedding,
        namespace: str,
    ) -> ConceptOutput:
        """One prompt through the concept heads (an embed-lane job), kept in the cache."""
        out = await self.images.embed_lane.run(
            scope.runtime.concept, features, text, p.boxes_xyxy, p.labels, tenant=namespace
        )
        self.concepts.put(key, features, out)
        return out

    async def _text_embeddings(
        self, scope: Scope, namespace: str, plans: list[PromptPlan]
    ) -> dict[str, TextEmbedding]:
        """Each distinct phrase's embedding ("visual" for box-only prompts): kept ones from
        the cache, ones another request is encoding now from its call, the rest in one
        text-encoder call on the embed lane (which finishes and fills the cache even if
        this request goes away: others may be waiting for it)."""
        model_id = scope.spec.model_id
        phrases = list(dict.fromkeys(p.phrase or VISUAL_PHRASE for p in plans))
        found: dict[str, TextEmbedding] = {}
        joined: dict[str, asyncio.Task[dict[str, Any]]] = {}
        missing = []
        for phrase in phrases:
            kept = self.texts.get(model_id, phrase)
            task = None if kept is not None else self.texts.pending(model_id, phrase)
            if kept is not None:
                found[phrase] = kept
            elif task is not None:
                joined[phrase] = task
            else:
                missing.append(phrase)
        if missing:
            task = asyncio.get_running_loop().create_task(self._encode(scope, namespace, missing))
            self.texts.track(model_id, missing, task)
            joined.update(dict.fromkeys(missing, task))
        for phrase, task in joined.items():
            found[phrase] = (await asyncio.shield(task))[phrase]
        return found

    async def _encode(
        self, scope: Scope, namespace: str, phrases: list[str]
    ) -> dict[str, TextEmbedding]:
        """`phrases` through the text encoder in one embed-lane call, kept in the cache."""
        encoded = await self.images.embed_lane.run(
            scope.runtime.encode_text, phrases, tenant=namespace
        )
        for phrase, embedding in zip(phrases, encoded, strict=True):
            self.texts.put(scope.spec.model_id, phrase, embedding)
        return dict(zip(phrases, encoded, strict=True))

    def _answer(
        self,
        scope: Scope,
        features: Sam3Features,
        outs: list[ConceptOutput],
        request: ConceptSegmentRequest,
        budget: int,
    ) -> list[PromptResult]:
        """Thresholds, NMS, caps, masks and format (on the embed lane)."""
        runtime = scope.runtime
        thresholds = [request.threshold_of(i) for i in range(len(outs))]
        found = candidates([o.scores for o in outs], thresholds)

        def mask_of(c: Candidate) -> np.ndarray:
            return runtime.masks(features, outs[c.prompt], np.array([c.query]))[0]

        selection = select(
            found,
            len(outs),
            mask_of,
            nms_iou=request.nms_iou_threshold,
            per_prompt_cap=self.settings.max_instances_per_prompt,
            max_masks=max_masks_for(budget, features.orig_hw),
        )
        rle = request.format == "rle"
        results = []
        for i, prompt in enumerate(request.prompts):
            predictions = [
                Sam3Prediction(
                    masks=RleMask(**postprocess.mask_to_rle(mask))
                    if rle
                    else postprocess.mask_to_polygons(mask),  # type: ignore[arg-type]
                    confidence=score,
                    format="rle" if rle else "polygon",
                )
                for _, score, mask in selection.kept[i]
            ]
            echo = PromptEcho(
                prompt_index=i,
                type=prompt.kind(),
                text=prompt.text,
                num_boxes=len(prompt.boxes or []),
            )
            results.append(
                PromptResult(
                    prompt_index=i,
                    echo=echo,
                    predictions=predictions,
                    found=selection.found[i],
                    note=selection.notes[i],
                )
            )
        return results


@dataclass(frozen=True)
class _Got:
    scope: Scope
    stored: StoredImage


def resolve_sam3(images: ImageService, requested: str | None) -> ModelSpec:
    """See `Sam3Service.spec_for`: None and Roboflow's ids ("sam3/sam3_final") mean the
    server's SAM 3 model (`SAM2SERVE_SAM3_MODEL`)."""
    models = images.models
    key = (requested or "").strip()
    if not key or key in SAM3_ALIASES:
        return models.resolve_sam3(None)
    return models.resolve_sam3(key)


def is_sam3(spec: ModelSpec) -> bool:
    """Whether `spec` is a SAM 3 model."""
    return spec.family == "sam3"
