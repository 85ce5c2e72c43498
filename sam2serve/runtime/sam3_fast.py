"""SAM 3's fast CPU path: Meta's same torch modules under torch's CPU autocast in bf16
(matmuls and convolutions in bf16 through oneDNN, the rest fp32), on a CPU that computes bf16
natively (AVX512-BF16 / AMX). The ViT trunk and the necks run so; features are kept in fp32
(same size and format as the exact runtime's). The text encoder and the concept heads run in
bf16 too, with attention kept out of autocast (`sam3_heads`: torch's CPU flash attention is
slower in bf16). Long self-attention, the ViT's and the fusion encoder's, runs in bf16 on
OpenVINO's attention kernel instead (`bf16_attention`: ~1.9x torch's), the rest in fp32.
Text embeddings and concept outputs come back fp32. The segmentation head runs only when
masks are asked for, for those queries (`sam3_heads.SegmentLater`). The instance predictor
stays exact.

Why not OpenVINO, as for SAM 2: measured on this machine (2 cores, Zen 4 with AVX512-BF16,
docs/benchmarks.md), the OpenVINO bf16 graph of SAM 3's ViT trunk was no faster than torch's
bf16 autocast (25.5 s vs 24.2 s; fp32 graph 61.6 s vs torch's 48.1 s), while exporting it
took 7.4 min and a 20 GB peak, too much for a server's first load. Autocast needs no export.

Tolerance against the exact runtime (`TOLERANCE`, checked by tests/integration/
test_sam3_fast.py on the tiny architecture; real-architecture figures in docs/benchmarks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2serve.registry import ModelSpec
from sam2serve.runtime.bf16_attention import Bf16Attention, routed
from sam2serve.runtime.cpu import cpu_flags
from sam2serve.runtime.sam3_heads import (
    bf16_heads,
    ground_then_segment_later,
    install_fp32_attention,
)
from sam2serve.runtime.sam3_runtime import Sam3Runtime, load_model
from sam2serve.runtime.sam3_types import ConceptOutput, Sam3Features, TextEmbedding

#: What the fast path promises against the exact one, checked by the tests: the trunk
#: output's relative error (L2), the concept scores' largest absolute error, and the
#: smallest IoU of a kept instance's full-size mask with the exact runtime's.
TOLERANCE: dict[str, float] = {"trunk_rel": 5e-2, "score_abs": 2e-2, "mask_iou_min": 0.9}


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16 or AMX-BF16 in its flags, and
    torch's oneDNN able to use them. oneDNN's own check alone is not enough: it answers True
    on any AVX512BW CPU (e.g. an Ice Lake Xeon), where bf16 is emulated, and there the
    fast path measured ~6x slower than fp32 (docs/benchmarks.md, "no native bf16")."""
    if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Sam3FastRuntime(Sam3Runtime):
    """`Sam3Runtime` with the image backbone (trunk + necks) in bf16 autocast, the text
    encoder and concept heads in bf16; long self-attention on `attention` (bf16, OpenVINO)."""

    precision = "bf16"
    tolerance = TOLERANCE

    def __init__(self, model_id: str, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__(model_id, model, device)
        install_fp32_attention(model)  # inert outside bf16_heads(): a shared model stays exact
        # long self-attention (the trunk's, the fusion encoder's) in bf16 on OpenVINO's kernel
        self.attention = Bf16Attention(torch.get_num_threads()) if device.type == "cpu" else None

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def trunk(self, rgb: np.ndarray) -> torch.Tensor:
        with self._autocast(), routed(self.attention):
            return super().trunk(rgb)

    @torch.inference_mode()
    def necks(
        self, trunk_out: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """The necks in bf16; the features come back fp32 (memory layout kept)."""
        with self._autocast():
            fpn, inst = super().necks(trunk_out)
        return (
            tuple(t.float() for t in fpn),
            None if inst is None else tuple(t.float() for t in inst),
        )

    @torch.inference_mode()
    def encoder_first(self, fpn: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """As the concept heads run it: bf16, the self-attention on `attention`; fp32 out."""
        with bf16_heads(self.device, self.attention):
            first = super().encoder_first(fpn)
        return None if first is None else first.float()

    @torch.inference_mode()
    def encode_text(self, phrases: list[str]) -> list[TextEmbedding]:
        """The text encoder in bf16 (attention fp32: causal); embeddings fp32, as the exact ones."""
        with bf16_heads(self.device, self.attention):
            texts = super().encode_text(phrases)
        return [
            TextEmbedding(phrase=t.phrase, features=t.features.float(), mask=t.mask) for t in texts
        ]

    @torch.inference_mode()
    def concept(
        self,
        features: Sam3Features,
        text: TextEmbedding | None,
        boxes_xyxy: np.ndarray,
        box_labels: np.ndarray,
    ) -> ConceptOutput:
        """The concept heads in bf16, the fusion encoder's self-attention on `attention`, other
        attention fp32 (outputs fp32, as the exact ones)."""
        with bf16_heads(self.device, self.attention):
            return super().concept(features, text, boxes_xyxy, box_labels)

    def _ground(
        self, backbone_out: dict, prompt: object, first: torch.Tensor | None
    ) -> tuple[dict, Any]:
        """Scores and boxes now; the segmentation head only for the queries `masks` asks for."""
        return ground_then_segment_later(self.model, backbone_out, self._find_stage, prompt, first)


def build_sam3_fast_runtime(
    spec: ModelSpec, checkpoint: Path, device: torch.device
) -> Sam3FastRuntime:
    """Load `spec` strictly (as the exact runtime) and wrap it in the bf16 fast path."""
    return Sam3FastRuntime(spec.model_id, load_model(spec, checkpoint, device), device)
