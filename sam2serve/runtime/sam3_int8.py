"""SAM 3's int8 CPU path: the bf16 fast path (`sam3_fast`) with the ViT trunk's linear
layers (attention qkv + proj, MLP fc1 + fc2: ~80 % of the trunk's work) as int8 x int8
matmuls on the CPU's VNNI units (oneDNN), everything else as in `Sam3FastRuntime`.

- Weights: int8, symmetric, one scale per output channel, quantized once at load from the
  model's fp32 weights (no calibration set, nothing exported or cached: about a second).
- Activations: uint8, one scale + zero point per call from the input's own min / max
  (dynamic), so no image can fall outside a range calibrated on other images.
- The matmul accumulates in int32 and writes bf16 with the bias added (oneDNN's
  `qlinear_pointwise`, the kernel torch's inductor emits for x86 int8 models); fc1's GELU
  is fused into it.

The model's own modules are untouched (the exact and bf16 runtimes may share them): the
trunk runs through a shallow copy whose blocks hold `Int8Linear`s instead.

Why not torch's `quantize_dynamic` (deprecated) or OpenVINO + NNCF (as SAM 2's encoder):
measured on this machine's kind (docs/benchmarks.md, "SAM 3 int8 trunk"), fbgemm's dynamic
linear (fp32 in and out, 7-bit activations unless told otherwise) was slower than this
kernel writing bf16, and a whole-trunk OpenVINO export costs minutes and a 20 GB peak (per-
block static int8 graphs were not tried: no time left in this round).

Tolerance (`TOLERANCE`, tested on the tiny architecture; real-architecture figures in
docs/benchmarks.md): looser on the trunk than bf16's, the same on scores and masks.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sam2serve.registry import ModelSpec
from sam2serve.runtime.bf16_attention import routed
from sam2serve.runtime.cpu import cpu_flags
from sam2serve.runtime.sam3_fast import Sam3FastRuntime, native_bf16
from sam2serve.runtime.sam3_heads import ground_then_segment_later
from sam2serve.runtime.sam3_runtime import Sam3Runtime, load_model

#: What the int8 path promises against the exact runtime (same keys as `sam3_fast.TOLERANCE`).
#: The trunk bound is twice bf16's: 2.9e-2 measured on seeded random weights of the real
#: architecture, and trained weights' activation outliers cost per-tensor int8 more.
TOLERANCE: dict[str, float] = {"trunk_rel": 1e-1, "score_abs": 2e-2, "mask_iou_min": 0.9}

#: The trunk block's linear layers that run in int8, by (child, grandchild) name.
_LINEARS = (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))
#: Each one's output dtype: fc1's is fc2's input, and fc2's quantizer works on fp32, so fc1
#: writes fp32 rather than bf16 to be converted back (not measured apart: both are close).
OUT_DTYPES: dict[str, torch.dtype] = {
    "qkv": torch.bfloat16,
    "proj": torch.bfloat16,
    "fc1": torch.float32,
    "fc2": torch.bfloat16,
}


def native_int8() -> bool:
    """Whether this CPU has int8 dot-product units (AVX512-VNNI, AVX-VNNI or AMX) and torch
    has oneDNN's int8 linear: without them int8 is emulated and slower than bf16."""
    flags = cpu_flags()
    has_units = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return has_units and hasattr(torch.ops.onednn, "qlinear_pointwise")


class Int8Linear(nn.Module):
    """An `nn.Linear` (in -> out features) as oneDNN int8: input (..., in) any float dtype,
    output (..., out) bf16. `gelu` fuses an exact (erf) GELU after the bias."""

    def __init__(
        self, linear: nn.Linear, gelu: bool = False, out_dtype: torch.dtype = torch.bfloat16
    ) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        w_int8 = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.register_buffer("w_scale", scale, persistent=False)
        self.register_buffer("w_zero", torch.zeros(len(scale), dtype=torch.long), persistent=False)
        self.register_buffer(
            "w_packed", torch.ops.onednn.qlinear_prepack(w_int8, None), persistent=False
        )
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias, persistent=False)
        self.out_dtype = out_dtype
        self.post_op = "gelu" if gelu else "none"
        self.post_algorithm = "none" if gelu else ""  # "none" = erf GELU (nn.GELU's default)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        qx, scale, zero = _quantize_uint8(x)
        y = torch.ops.onednn.qlinear_pointwise(
            qx,
            scale,
            zero,
            self.w_packed,
            self.w_scale,
            self.w_zero,
            self.bias,
            1.0,
            0,
            self.out_dtype,
            self.post_op,
            [],
            self.post_algorithm,
        )
        return y.reshape(*shape[:-1], self.out_features)


def _quantize_uint8(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """x -> (uint8 x, scale, zero point): asymmetric, per tensor, from x's own range (0
    always inside it, so zero padding stays exact).

    The rounding is torch's fused `quantize_per_tensor` kernel (the same chain of div /
    round / add / clamp ops in eager torch cost as much as the int8 matmul itself). It is
    deprecated (quantized tensors, pytorch/pytorch#184982, warns once per process): when
    torch removes it, replace this one function by `torch.ops.quantized_decomposed.
    quantize_per_tensor` under `torch.compile` (inductor fuses it into one loop) or by
    the eager chain (correct, slower); the matmul kernel (`onednn::qlinear_pointwise`,
    what inductor itself emits for x86 int8) takes plain uint8 tensors and stays.
    """
    x = x.float()
    lo, hi = torch.aminmax(x)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255, 1e-12)
    zero = min(max(round(-lo / scale), 0), 255)
    return _uint8_view(torch.quantize_per_tensor(x, scale, zero, torch.quint8)), scale, zero


def _uint8_view(q: torch.Tensor) -> torch.Tensor:
    """A quint8 tensor's values as a plain uint8 tensor on the same memory (no copy).
    `int_repr` copies them: for fc2's (5184, 4096) input, quantize + `int_repr` took 36 ms
    on an Ice Lake core pair, quantize + this view 16 ms (the whole embed did not move
    measurably: 0.56x of Meta's set_image before and after, docs/benchmarks.md)."""
    out = torch.empty(0, dtype=torch.uint8, device=q.device)
    return out.set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def _with_children(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A shallow copy of `module` (same parameters) with some children replaced."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone


#: Output dtypes where the CPU has int8 units but no native bf16: fp32 throughout (a bf16
#: output would be converted by emulation, and the rest of the trunk runs in fp32 there).
FP32_OUT_DTYPES: dict[str, torch.dtype] = dict.fromkeys(OUT_DTYPES, torch.float32)


def int8_trunk(trunk: nn.Module, out_dtypes: dict[str, torch.dtype] = OUT_DTYPES) -> nn.Module:
    """A copy of SAM 3's ViT trunk sharing every parameter with `trunk` except the blocks'
    linear layers, which become `Int8Linear`s (the MLP's GELU fused into fc1) writing
    `out_dtypes[name]`."""
    blocks = []
    for block in trunk.blocks:
        parts = {}
        for part in ("attn", "mlp"):
            sub = getattr(block, part)
            names = [leaf for owner, leaf in _LINEARS if owner == part]
            new = {
                n: Int8Linear(getattr(sub, n), gelu=(n == "fc1"), out_dtype=out_dtypes[n])
                for n in names
            }
            if part == "mlp":  # GELU now inside fc1
                if not isinstance(sub.act, nn.GELU) or sub.act.approximate != "none":
                    raise ValueError(f"unexpected MLP activation {sub.act!r}")
                new["act"] = nn.Identity()
            parts[part] = _with_children(sub, **new)
        blocks.append(_with_children(block, **parts))
    return _with_children(trunk, blocks=nn.ModuleList(blocks))


class Sam3Int8Runtime(Sam3FastRuntime):
    """`Sam3FastRuntime` with the ViT trunk's linear layers in int8 (the rest as bf16)."""

    precision = "int8-bf16"
    tolerance = TOLERANCE

    def __init__(self, model_id: str, model: nn.Module, device: torch.device) -> None:
        super().__init__(model_id, model, device)
        self._trunk = int8_trunk(model.backbone.vision_backbone.trunk)

    @torch.inference_mode()
    def trunk(self, rgb: np.ndarray) -> torch.Tensor:
        from sam2serve.runtime.sam3_device import on_device

        with on_device(self.device), self._autocast(), routed(self.attention):
            return self._trunk(self.preprocess(rgb))[-1]


class Sam3Int8Fp32Runtime(Sam3Runtime):
    """For a CPU with int8 units but no native bf16 (e.g. Ice Lake Xeons: AVX512-VNNI, no
    AVX512-BF16): the ViT trunk's linear layers in int8 writing fp32, everything else the
    exact runtime's fp32 (bf16 would be emulated there, several times slower than fp32;
    OpenVINO's fp32 attention kernel was no faster than torch's, docs/benchmarks.md), the
    segmentation head deferred to the queries whose masks are asked for (as the bf16 path)."""

    precision = "int8-fp32"
    tolerance = TOLERANCE

    def __init__(self, model_id: str, model: nn.Module, device: torch.device) -> None:
        super().__init__(model_id, model, device)
        self._trunk = int8_trunk(model.backbone.vision_backbone.trunk, FP32_OUT_DTYPES)

    @torch.inference_mode()
    def trunk(self, rgb: np.ndarray) -> torch.Tensor:
        from sam2serve.runtime.sam3_device import on_device

        with on_device(self.device):
            return self._trunk(self.preprocess(rgb))[-1]

    def _ground(
        self, backbone_out: dict, prompt: object, first: torch.Tensor | None
    ) -> tuple[dict, Any]:
        """Scores and boxes now; the segmentation head (fp32) only for the queries kept."""
        return ground_then_segment_later(
            self.model, backbone_out, self._find_stage, prompt, first, bf16=False
        )


def build_sam3_int8_runtime(
    spec: ModelSpec, checkpoint: Path, device: torch.device
) -> Sam3Int8Runtime | Sam3Int8Fp32Runtime:
    """Load `spec` strictly (as the exact runtime) and wrap it in the int8 path: with bf16
    around it where the CPU computes bf16 natively, fp32 elsewhere."""
    model = load_model(spec, checkpoint, device)
    if native_bf16():
        return Sam3Int8Runtime(spec.model_id, model, device)
    return Sam3Int8Fp32Runtime(spec.model_id, model, device)


def int8_available(device: torch.device) -> bool:
    """Whether the int8 path can run fast here: a CPU with int8 units (`build_sam3_int8_
    runtime` then picks bf16 or fp32 around it by `native_bf16`)."""
    return device.type == "cpu" and native_int8()
