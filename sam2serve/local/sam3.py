"""The in-process Segmenter's SAM 3 calls (`sam3_embed_image`, `concept_segment`): the same
request bodies and results as the HTTP clients, run on the Segmenter's own services."""

from __future__ import annotations

from functools import partial
from typing import Any, Protocol

from sam2serve.client.calls import CallBuilder
from sam2serve.client.concept import (
    CONCEPT_PATH,
    ConceptCall,
    ConceptResult,
    concept_body,
    concept_prompts,
)
from sam2serve.client.image_encode import ImageLike, is_url
from sam2serve.client.results import EmbedResult
from sam2serve.local.bodies import service_body
from sam2serve.media.decode import LoadedImage
from sam2serve.sam3.schema import (
    ConceptSegmentRequest,
    LocalSam3EmbedRequest,
    Sam3EmbedRequest,
)
from sam2serve.wiring import PUBLIC_NAMESPACE, Services


class Segmenter(Protocol):
    """What these calls use of `sam2serve.local.segmenter.Segmenter`."""

    _services: Services
    _caller: Any  # its LoopCaller: validate (typed 422s) and call (typed errors)
    _calls: CallBuilder

    def _pixels(self, image: ImageLike, bgr: bool) -> LoadedImage: ...


def check_model(seg: Segmenter, model: str | None) -> None:
    """An unknown or SAM 2 model is reported (typed error) before the image is decoded."""

    async def resolve() -> None:
        seg._services.sam3.spec_for(model)

    seg._caller.call(resolve())


def load(seg: Segmenter, model: str | None) -> str:
    """Load a SAM 3 model now (default: the server's, SAM2SERVE_SAM3_MODEL); its id."""
    images = seg._services.images
    sam3 = seg._services.sam3

    async def go() -> str:
        spec = sam3.spec_for(model)
        await images.pool.get(spec)
        return spec.model_id

    return seg._caller.call(go())


def embed(
    seg: Segmenter, image: ImageLike, image_id: str | None, model: str | None, bgr: bool
) -> EmbedResult:
    sam3 = seg._services.sam3
    context = {"sam3_limits": sam3.limits}
    if isinstance(image, str) and is_url(image):  # fetched by the service, as a server does
        body: dict[str, Any] = {"image": {"type": "url", "value": image}}
        body.update({k: v for k, v in {"image_id": image_id, "model_id": model}.items() if v})
        request: Any = seg._caller.validate(Sam3EmbedRequest, body, context)
        pixels, size = None, None
    else:
        fields = {"image_id": image_id, "model_id": model}
        request = seg._caller.validate(LocalSam3EmbedRequest, fields, context)
        check_model(seg, model)
        pixels = seg._pixels(image, bgr)
        size = pixels.hw
    response = seg._caller.call(sam3.embed(request, PUBLIC_NAMESPACE, pixels=pixels))
    return seg._calls.embedded(EmbedResult(response.image_id, response.time), size)


def concept_segment(
    seg: Segmenter,
    image: ImageLike | None = None,
    image_id: str | None = None,
    *,
    text: str | None = None,
    texts: list[str] | None = None,
    boxes: Any = None,
    box_labels: list[int | bool] | None = None,
    threshold: float | None = None,
    nms_iou_threshold: float | None = None,
    prompts: list[dict[str, Any]] | None = None,
    model: str | None = None,
    bgr: bool = False,
) -> ConceptResult:
    asked = concept_prompts(text, texts, boxes, box_labels, prompts)
    request_body = concept_body(image_id, model, asked, threshold, nms_iou_threshold)
    body, pixels = service_body(
        request_body, image, image_id, bgr, seg._pixels, partial(check_model, seg, model)
    )
    call = ConceptCall(CONCEPT_PATH, request_body, image, bgr)
    sam3 = seg._services.sam3
    request = seg._caller.validate(ConceptSegmentRequest, body, {"sam3_limits": sam3.limits})
    answer = seg._caller.call(sam3.concept_segment(request, PUBLIC_NAMESPACE, pixels=pixels))
    return call.parse(answer.model_dump(mode="json"))
