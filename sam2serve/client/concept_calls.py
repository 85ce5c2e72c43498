"""The SDK clients' SAM 3 methods (`sam3_embed_image`, `concept_segment`), mixed into
`Sam2Client` and `AsyncSam2Client` (`client.http`): they post through the client's own
embed (`_embed`: SAM 3's route and model field) and retrying, resending `_post_resending`."""

from __future__ import annotations

from typing import Any

from sam2serve.client.concept import (
    SAM3_EMBED_PATH,
    ConceptResult,
    concept_call,
    concept_prompts,
)
from sam2serve.client.image_encode import ImageLike
from sam2serve.client.results import EmbedResult


class ConceptCalls:
    """SAM 3 methods of the blocking client."""

    _json: Any
    _embed: Any
    _post_resending: Any

    def sam3_embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """Embed an image for SAM 3 once; later `concept_segment(image_id=...)` calls skip
        the upload and the image encoder. `model`: a SAM 3 model id (None: the server's)."""
        return self._embed(SAM3_EMBED_PATH, "model_id", image, image_id, model, bgr)

    def concept_segment(
        self,
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
        """SAM 3: every instance of a concept, as masks with scores.

        Args:
            text / texts: a noun phrase ("car"), or several (one prompt each).
            boxes: exemplar CORNER boxes ``(x1, y1, x2, y2)`` (N, 4): with `text`, they join
                its prompt; alone, they are a prompt of their own. `box_labels`: 1 = like
                this, 0 = not like this (default all 1).
            threshold: score threshold (default the server's, 0.5).
            nms_iou_threshold: drop instances overlapping a better one of any prompt.
            prompts: Roboflow prompt dicts, sent after the ones above.
        Returns a `ConceptResult` (`to_detections()` names classes by phrase).
        """
        asked = concept_prompts(text, texts, boxes, box_labels, prompts)
        call = concept_call(image, image_id, model, bgr, asked, threshold, nms_iou_threshold)
        response = self._post_resending(call.path, call)
        return call.parse(self._json(response))


class AsyncConceptCalls:
    """SAM 3 methods of the asyncio client."""

    _json: Any
    _embed: Any
    _post_resending: Any

    async def sam3_embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """See `Sam2Client.sam3_embed_image`."""
        return await self._embed(SAM3_EMBED_PATH, "model_id", image, image_id, model, bgr)

    async def concept_segment(
        self,
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
        """See `Sam2Client.concept_segment`."""
        asked = concept_prompts(text, texts, boxes, box_labels, prompts)
        call = concept_call(image, image_id, model, bgr, asked, threshold, nms_iou_threshold)
        response = await self._post_resending(call.path, call)
        return call.parse(self._json(response))
