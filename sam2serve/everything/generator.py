"""Segment everything: every object of an image as a mask, from a grid of point prompts.

The same pipeline as Meta's `SAM2AutomaticMaskGenerator` (same grids, crops, filters and
NMS, in the same order, so the exact runtime gives the same set of masks), arranged to do
less work on the same runtime seam (`runtime.decode` / `runtime.upscale` on `Features`):

* the predicted-IoU filter runs on the decoder's scores before anything is upscaled, and
  only the survivors are upscaled (in bounded chunks) for the stability score and boxes;
* candidates keep their low-res logits (m x m), not full-resolution masks or RLEs; only the
  masks that survive both NMS passes are upscaled again and returned;
* prompt-independent decoder work is done once per image by the runtime (fast runtime).

Drive it step by step (`EverythingRun`: crops -> batches -> finish) so that a server can run
each batch as its own job and stop between batches, or all at once with `generate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from sam2serve.errors import PayloadTooLarge, Unavailable
from sam2serve.everything.schema import EverythingParams
from sam2serve.runtime import amg
from sam2serve.runtime.base import LABEL_POSITIVE, Features, PromptBatch, Runtime

UPSCALE_ELEMENTS = 1 << 25  # full-resolution logits upscaled at once (128 MiB of float32)


@dataclass(frozen=True)
class AutoMask:
    """One mask of the result, in the original image frame.

    mask: (H, W) bool; bbox: [x, y, w, h] as upstream reports it (w = x1 - x0 of the
    inclusive box); point: [x, y] grid point; crop_box: [x, y, w, h] of its crop.
    """

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    bbox: list[float]
    area: int
    point: list[float]
    crop_box: list[int]


@dataclass
class _Candidates:
    """Masks kept so far. low_res (K, m, m) logits; iou, stability (K,); points (K, 2)
    and boxes (K, 4) xyxy in the frame named by the owner; crop (K,) crop indices."""

    low_res: list[torch.Tensor] = field(default_factory=list)
    iou: list[torch.Tensor] = field(default_factory=list)
    stability: list[torch.Tensor] = field(default_factory=list)
    points: list[torch.Tensor] = field(default_factory=list)
    boxes: list[torch.Tensor] = field(default_factory=list)
    crop: list[torch.Tensor] = field(default_factory=list)

    def add(self, **parts: torch.Tensor) -> None:
        for name, value in parts.items():
            getattr(self, name).append(value)

    def count(self) -> int:
        return sum(len(t) for t in self.iou)

    def cat(self) -> dict[str, torch.Tensor]:
        names = ("low_res", "iou", "stability", "points", "boxes", "crop")
        return {n: torch.cat(getattr(self, n)) for n in names}


@dataclass(frozen=True)
class Crop:
    """box: [x0, y0, x1, y1] in the image; layer: crop layer; points: (P, 2) float32
    grid points in the crop's own pixel frame."""

    index: int
    box: list[int]
    layer: int
    points: np.ndarray

    @property
    def is_whole_image(self) -> bool:
        return self.index == 0


class EverythingRun:
    """One segment-everything over an image of `orig_hw` pixels on `runtime`."""

    def __init__(
        self,
        runtime: Runtime,
        params: EverythingParams,
        orig_hw: tuple[int, int],
        *,
        max_candidates: int = 4096,
        predictor_regions: bool = True,
    ) -> None:
        """predictor_regions: clean regions under min_mask_region_area before upscaling, as
        upstream's generator configures its own predictor; False: the runtime's `upscale`
        post-processes as its predictor is built (SAM 3's instance predictor, as
        `predict_inst` uses it: holes up to 256 px filled)."""
        self.runtime = runtime
        self.params = params
        self.predictor_regions = predictor_regions
        self.orig_hw = orig_hw
        self.max_candidates = max_candidates
        grids = amg.build_all_layer_point_grids(
            params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor
        )
        boxes, layers = amg.generate_crop_boxes(
            orig_hw, params.crop_n_layers, params.crop_overlap_ratio
        )
        self.crops: list[Crop] = []
        for i, (box, layer) in enumerate(zip(boxes, layers, strict=True)):
            scale = np.array([box[2] - box[0], box[3] - box[1]])[None]  # (1, 2) w, h
            points = (grids[layer] * scale).astype(np.float32)
            self.crops.append(Crop(i, box, layer, points))
        self._kept = _Candidates()  # after each crop's NMS, image frame
        self._crop = _Candidates()  # the current crop's, crop frame

    @property
    def total_points(self) -> int:
        return sum(len(c.points) for c in self.crops)

    def batches(self, crop: Crop) -> Iterator[np.ndarray]:
        """The crop's grid points, points_per_batch at a time: (B, 2) float32."""
        step = self.params.points_per_batch
        for start in range(0, len(crop.points), step):
            yield crop.points[start : start + step]

    # -- per batch ------------------------------------------------------------------

    def _decode(
        self, features: Features, points: np.ndarray, mask_input: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(points)
        batch = PromptBatch(
            coords=points[:, None, :],
            labels=np.full((n, 1), LABEL_POSITIVE, dtype=np.int32),
            mask_input=None if mask_input is None else mask_input[:, None].numpy(),
        )
        multimask = self.params.multimask_output and mask_input is None
        decoded = self.runtime.decode(features, batch, multimask)
        return decoded.low_res.float().cpu(), decoded.scores.float().cpu()

    def _upscale(self, low_res: torch.Tensor, hw: tuple[int, int]) -> Iterator[torch.Tensor]:
        """(K, m, m) -> chunks of (k, h, w) full-resolution logits (small regions cleaned
        first when min_mask_region_area > 0, as upstream's predictor does)."""
        chunk = max(1, UPSCALE_ELEMENTS // (hw[0] * hw[1]))
        area = self.params.min_mask_region_area if self.predictor_regions else 0
        for start in range(0, len(low_res), chunk):
            part = amg.fill_small_regions(low_res[start : start + chunk], area)
            yield self.runtime.upscale(part, hw).float().cpu()

    def process_batch(self, crop: Crop, features: Features, points: np.ndarray) -> None:
        """Decode one batch of grid points of `crop` (features: the crop's embedding) and
        keep the masks that pass the predicted-IoU, stability and crop-edge filters."""
        p = self.params
        low_res, iou = self._decode(features, points)  # (B, C, m, m), (B, C)
        c = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou = iou.flatten(0, 1)
        pts = torch.as_tensor(points).repeat_interleave(c, dim=0)
        if p.use_m2m:
            refined, refined_iou = [], []
            previous = torch.clamp(low_res, -32.0, 32.0)
            for start in range(0, len(pts), p.points_per_batch):
                stop = start + p.points_per_batch
                lr, sc = self._decode(features, pts[start:stop].numpy(), previous[start:stop])
                refined.append(lr[:, 0])
                refined_iou.append(sc[:, 0])
            low_res, iou = torch.cat(refined), torch.cat(refined_iou)
        if p.pred_iou_thresh > 0.0:
            keep = iou > p.pred_iou_thresh
            low_res, iou, pts = low_res[keep], iou[keep], pts[keep]
        if len(iou) == 0:
            return
        crop_hw = (crop.box[3] - crop.box[1], crop.box[2] - crop.box[0])
        stability, boxes = [], []
        for logits in self._upscale(low_res, crop_hw):
            stability.append(
                amg.calculate_stability_score(logits, p.mask_threshold, p.stability_score_offset)
            )
            boxes.append(amg.batched_mask_to_box(logits > p.mask_threshold))
        stab, box = torch.cat(stability), torch.cat(boxes)
        keep = torch.ones(len(iou), dtype=torch.bool)
        if p.stability_score_thresh > 0.0:
            keep &= stab >= p.stability_score_thresh
        h, w = self.orig_hw
        keep &= ~amg.is_box_near_crop_edge(box, crop.box, [0, 0, w, h])
        if not keep.any():
            return
        self._crop.add(
            low_res=low_res[keep].clone(),
            iou=iou[keep],
            stability=stab[keep],
            points=pts[keep],
            boxes=box[keep],
            crop=torch.full((int(keep.sum()),), crop.index, dtype=torch.int64),
        )
        held = self._kept.count() + self._crop.count()
        if held > self.max_candidates:
            raise PayloadTooLarge(
                f"segment_everything holds {held} candidate masks, over this server's budget "
                f"of {self.max_candidates}: raise pred_iou_thresh or stability_score_thresh, "
                "or lower points_per_side / crop_n_layers",
                field="points_per_side",
            )

    def finish_crop(self, crop: Crop) -> None:
        """NMS within the crop, then move its masks to the image frame."""
        if self._crop.count() == 0:
            self._crop = _Candidates()
            return
        data = self._crop.cat()
        self._crop = _Candidates()
        keep = batched_nms(
            data["boxes"].float(),
            data["iou"],
            torch.zeros_like(data["boxes"][:, 0]),
            iou_threshold=self.params.box_nms_thresh,
        )
        data = {k: v[keep] for k, v in data.items()}
        data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop.box)
        data["points"] = amg.uncrop_points(data["points"], crop.box)
        self._kept.add(**data)

    # -- result ---------------------------------------------------------------------

    def finish(self) -> list[AutoMask]:
        """NMS across crops (smaller crops win), then the full-resolution masks, largest
        area first."""
        if self._kept.count() == 0:
            return []
        data = self._kept.cat()
        if len(self.crops) > 1:
            crop_boxes = torch.tensor([self.crops[int(i)].box for i in data["crop"]])
            keep = batched_nms(
                data["boxes"].float(),
                1 / box_area(crop_boxes),
                torch.zeros_like(data["boxes"][:, 0]),
                iou_threshold=self.params.crop_nms_thresh,
            )
            data = {k: v[keep] for k, v in data.items()}
        masks: list[AutoMask] = []
        for i in range(len(data["iou"])):
            crop = self.crops[int(data["crop"][i])]
            masks.append(self._record(crop, data, i))
        masks.sort(key=lambda m: m.area, reverse=True)
        return masks

    def _record(self, crop: Crop, data: dict[str, torch.Tensor], i: int) -> AutoMask:
        x0, y0, x1, y1 = crop.box
        (logits,) = self._upscale(data["low_res"][i : i + 1], (y1 - y0, x1 - x0))
        mask = np.zeros(self.orig_hw, dtype=bool)
        mask[y0:y1, x0:x1] = (logits[0] > self.params.mask_threshold).numpy()
        bx0, by0, bx1, by1 = (float(v) for v in data["boxes"][i])
        return AutoMask(
            mask=mask,
            predicted_iou=float(data["iou"][i]),
            stability_score=float(data["stability"][i]),
            bbox=[bx0, by0, bx1 - bx0, by1 - by0],
            area=int(mask.sum()),
            point=[float(v) for v in data["points"][i]],
            crop_box=[x0, y0, x1 - x0, y1 - y0],
        )


def crop_pixels(rgb: np.ndarray, crop: Crop) -> np.ndarray:
    """(H, W, 3) image -> the crop's (h, w, 3) pixels, contiguous for the encoder."""
    x0, y0, x1, y1 = crop.box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def generate(
    runtime: Runtime,
    params: EverythingParams,
    *,
    rgb: np.ndarray | None = None,
    features: Features | None = None,
    max_candidates: int = 4096,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    predictor_regions: bool = True,
) -> list[AutoMask]:
    """All of it in the calling thread. `features` (the whole image's, if already
    embedded) saves one embed; crops need `rgb`. `deadline` (time.monotonic()) -> 503."""
    if features is None and rgb is None:
        raise ValueError("give rgb or features")
    orig_hw = features.orig_hw if features is not None else (rgb.shape[0], rgb.shape[1])
    run = EverythingRun(
        runtime, params, orig_hw, max_candidates=max_candidates, predictor_regions=predictor_regions
    )
    if len(run.crops) > 1 and rgb is None:
        raise ValueError("crop_n_layers > 0 needs the image pixels (rgb)")
    for crop in run.crops:
        if crop.is_whole_image and features is not None:
            crop_features = features
        else:
            crop_features = runtime.embed(crop_pixels(rgb, crop))  # type: ignore[arg-type]
        for points in run.batches(crop):
            check_budget(deadline, should_stop)
            run.process_batch(crop, crop_features, points)
        run.finish_crop(crop)
    return run.finish()


class Stopped(Exception):
    """The caller went away; the remaining batches were skipped."""


def check_budget(deadline: float | None, should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Stopped
    if deadline is not None and time.monotonic() > deadline:
        raise Unavailable(
            "segment_everything ran past this server's time budget: lower points_per_side "
            "or crop_n_layers, or raise SAM2SERVE_EVERYTHING_MAX_SECONDS",
            retry_after=None,
        )
