"""Meta's automatic-mask-generator helpers, the only door to `sam2.utils.amg`.

The segment-everything pipeline (sam2serve.everything.generator) uses upstream's own point grids,
crop boxes, stability score, mask boxes and crop-edge test, so that its output is the
same set of masks as `SAM2AutomaticMaskGenerator`'s. This module also gives a CPU
version of the small-region cleanup that upstream runs through a CUDA-only kernel.
"""

from __future__ import annotations

import numpy as np
import torch
from sam2.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_points,
)

__all__ = [
    "batched_mask_to_box",
    "build_all_layer_point_grids",
    "calculate_stability_score",
    "connected_components",
    "fill_small_regions",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "uncrop_boxes_xyxy",
    "uncrop_points",
]


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU twin of `sam2.utils.misc.get_connected_components` (8-connectivity).

    mask: (N, 1, H, W) bool/0-1 -> labels (N, 1, H, W) int32 (0 = background) and
    counts (N, 1, H, W) int32, each foreground pixel holding its component's area.
    """
    import cv2

    flat = mask.reshape(-1, *mask.shape[-2:]).to(torch.uint8).cpu().numpy()
    labels = np.zeros(flat.shape, dtype=np.int32)
    counts = np.zeros(flat.shape, dtype=np.int32)
    for i, m in enumerate(flat):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        areas = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        areas[0] = 0  # cv2's label 0 is the background
        labels[i] = lab
        counts[i] = areas[lab]
    shape = mask.shape
    return torch.from_numpy(labels).reshape(shape), torch.from_numpy(counts).reshape(shape)


def fill_small_regions(
    low_res: torch.Tensor, max_area: int, threshold: float = 0.0
) -> torch.Tensor:
    """What `SAM2Transforms.postprocess_masks` does before upscaling when
    `max_hole_area = max_sprinkle_area = max_area` (the generator's min_mask_region_area):
    background holes of area <= max_area become `threshold + 10`, foreground specks of
    area <= max_area become `threshold - 10`.

    low_res: (N, m, m) float32 logits -> (N, m, m) float32.
    """
    if max_area <= 0 or low_res.shape[0] == 0:
        return low_res
    masks = low_res[:, None].float()
    labels, areas = connected_components(masks <= threshold)
    is_hole = (labels > 0) & (areas <= max_area)
    masks = torch.where(is_hole, threshold + 10.0, masks)
    labels, areas = connected_components(masks > threshold)
    is_speck = (labels > 0) & (areas <= max_area)
    masks = torch.where(is_speck, threshold - 10.0, masks)
    return masks[:, 0]
