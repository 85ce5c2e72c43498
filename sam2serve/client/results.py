"""Typed results shared by the HTTP clients and the in-process Segmenter.

`parse_segment` turns a segment answer — the JSON of ``format`` json/rle, or the ``.npz`` bytes
of ``format=binary`` — into a `SegmentResult`. Masks are ``(H, W)`` bool arrays in
original-image pixels (after EXIF orientation), decoded lazily:

- rle: exact (COCO RLE, holes included); the size comes with the answer;
- polygon: filled from the polygons with the image size (holes filled, as the polygons are
  outer boundaries), so it needs to know the size (the client knows it for local images and
  for image ids it embedded; ask for rle when it cannot);
- binary: ``logits > 0`` (exact); the npz carries no confidences, so ``confidence`` is None.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2serve.media import postprocess

if TYPE_CHECKING:
    import supervision

    from sam2serve.client.image_encode import ImageLike

__all__ = ["EmbedResult", "MaskPrediction", "SegmentResult", "parse_segment"]


@dataclass(frozen=True)
class EmbedResult:
    """image_id: use it in `segment_image(image_id=...)`; time: seconds spent server-side."""

    image_id: str
    time: float


@dataclass(eq=False)
class MaskPrediction:
    """One prompt's mask. `format` is what the server sent: "rle", "polygon" or "binary"."""

    confidence: float | None
    format: str
    image_size: tuple[int, int] | None = None
    rle: dict[str, Any] | None = field(default=None, repr=False)
    raw_polygons: list[list[list[int]]] | None = field(default=None, repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)
    low_res_logits: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def mask(self) -> np.ndarray:
        """``(H, W)`` bool, True inside the object."""
        if self.rle is not None:
            return postprocess.rle_to_mask(self.rle)
        if self.logits is not None:
            return postprocess.logits_to_mask(self.logits)
        if self.image_size is None:
            raise ValueError(
                "this prediction came as polygons and the image size is unknown (URL input, "
                "or an image_id this client did not embed): ask for format='rle'"
            )
        return postprocess.polygons_to_mask(self.raw_polygons or [], *self.image_size)

    @property
    def polygons(self) -> list[list[list[int]]]:
        """Polygons of ``[x, y]`` pixel points, one per connected part (outer boundaries)."""
        if self.raw_polygons is not None:
            return self.raw_polygons
        return postprocess.mask_to_polygons(self.mask)

    def to_rle(self) -> dict[str, Any]:
        """COCO compressed RLE ``{"size": [H, W], "counts": str}`` (pycocotools-compatible)."""
        if self.rle is not None:
            return dict(self.rle)
        return postprocess.mask_to_rle(self.mask)

    @property
    def area(self) -> int:
        """Mask pixels."""
        return int(self.mask.sum())

    @property
    def box_xyxy(self) -> tuple[int, int, int, int] | None:
        """Tight corner box ``(x1, y1, x2, y2)`` of the mask (inclusive pixels), None if empty."""
        return _mask_box(self.mask)


@dataclass(eq=False)
class SegmentResult:
    """All predictions of one request, in prompt order.

    prompts: what was sent, in the API's form (center boxes); used to draw them.
    raw: the JSON answer as received (None for format=binary).
    """

    predictions: list[MaskPrediction]
    time: float | None = None
    image_id: str | None = None
    image_size: tuple[int, int] | None = None
    prompts: list[dict[str, Any]] | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False)
    source: Any = field(default=None, repr=False)
    source_bgr: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[MaskPrediction]:
        return iter(self.predictions)

    def __getitem__(self, index: int) -> MaskPrediction:
        return self.predictions[index]

    @property
    def masks(self) -> np.ndarray:
        """``(N, H, W)`` bool."""
        if not self.predictions:
            h, w = self.image_size or (0, 0)
            return np.zeros((0, h, w), dtype=bool)
        return np.stack([p.mask for p in self.predictions])

    @property
    def confidences(self) -> np.ndarray:
        """``(N,)`` float32 (NaN where the server sent none: format=binary)."""
        return np.array(
            [np.nan if p.confidence is None else p.confidence for p in self.predictions],
            dtype=np.float32,
        )

    def to_detections(self) -> supervision.Detections:
        """A `supervision.Detections`: masks ``(N, H, W)`` bool, xyxy boxes from the masks
        (``(N, 4)`` float32, inclusive pixel corners; zeros for an empty mask), confidence,
        and ``class_id`` = prompt index (so annotators give each prompt its own colour)."""
        return self._detections(np.arange(len(self.predictions), dtype=int))

    def _detections(
        self, class_id: np.ndarray, data: dict[str, np.ndarray] | None = None
    ) -> supervision.Detections:
        """`to_detections` with the caller's class ids (and `data`, e.g. class names): what
        differs between the result types is only how masks are grouped into classes."""
        try:
            import supervision as sv
        except ImportError as exc:
            raise ImportError(
                "to_detections() needs supervision: pip install 'sam2serve[supervision]'"
            ) from exc
        masks = self.masks
        boxes = [_mask_box(m) or (0, 0, 0, 0) for m in masks]
        return sv.Detections(
            xyxy=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            mask=masks,
            confidence=self.confidences,
            class_id=class_id,
            data=data or {},
        )

    def to_json(self) -> dict[str, Any]:
        """The answer as JSON: the server's own for json/rle; rebuilt (rle) for binary."""
        if self.raw is not None:
            return self.raw
        return {
            "predictions": [
                {"masks": p.to_rle(), "confidence": p.confidence, "format": "rle"}
                for p in self.predictions
            ],
            "time": self.time,
        }

    def annotate(self, image: ImageLike | None = None, *, bgr: bool = False) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB: the image with mask overlays, outlines and the prompts.

        `image` defaults to the image this result was computed from, when it was given as a
        path, bytes, PIL image or array (not for image_id-only requests).
        """
        from sam2serve.media.annotate import annotate

        return annotate(self.source_rgb(image, bgr=bgr), self.masks, self.prompts)

    def source_rgb(self, image: ImageLike | None = None, *, bgr: bool = False) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB of `image`, by default the image this result was computed
        from (ValueError for an image_id-only request: there is no image to draw on)."""
        from sam2serve.client.image_encode import load_rgb

        if image is None:
            if self.source is None:
                raise ValueError(
                    "this result was made from an image_id: pass the image to annotate()"
                )
            image, bgr = self.source, self.source_bgr
        return load_rgb(image, bgr=bgr)

    def save_annotated(
        self, path: str | Path, image: ImageLike | None = None, *, bgr: bool = False
    ) -> Path:
        """Write `annotate(image)` as an image file (PNG by extension) and return its path."""
        from PIL import Image

        out = Path(path)
        Image.fromarray(self.annotate(image, bgr=bgr)).save(out)
        return out


def parse_segment(
    answer: dict[str, Any] | bytes,
    *,
    image_size: tuple[int, int] | None = None,
    image_id: str | None = None,
    prompts: list[dict[str, Any]] | None = None,
    source: Any = None,
    source_bgr: bool = False,
) -> SegmentResult:
    """A segment answer (JSON dict, or npz bytes for format=binary) -> SegmentResult."""
    context = {
        "image_id": image_id,
        "prompts": prompts,
        "source": source,
        "source_bgr": source_bgr,
    }
    if isinstance(answer, (bytes, bytearray, memoryview)):
        with np.load(io.BytesIO(bytes(answer)), allow_pickle=False) as npz:
            full = np.asarray(npz["masks"], dtype=np.float32)
            low = np.asarray(npz["low_res_masks"], dtype=np.float32)
        size = (int(full.shape[1]), int(full.shape[2]))
        preds = [
            MaskPrediction(None, "binary", size, logits=f, low_res_logits=lr)
            for f, lr in zip(full, low, strict=True)
        ]
        return SegmentResult(preds, None, image_size=size, **context)
    preds = [_prediction(p, image_size) for p in answer.get("predictions", [])]
    if preds and preds[0].rle is not None:
        image_size = tuple(int(v) for v in preds[0].rle["size"])  # type: ignore[assignment]
    time = answer.get("time")
    return SegmentResult(
        preds,
        float(time) if time is not None else None,
        image_size=image_size,
        raw=answer,
        **context,
    )


def _prediction(p: dict[str, Any], image_size: tuple[int, int] | None) -> MaskPrediction:
    masks = p.get("masks")
    confidence = p.get("confidence")
    confidence = float(confidence) if confidence is not None else None
    if isinstance(masks, dict):
        size = (int(masks["size"][0]), int(masks["size"][1]))
        return MaskPrediction(confidence, "rle", size, rle=masks)
    return MaskPrediction(confidence, "polygon", image_size, raw_polygons=masks or [])


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
