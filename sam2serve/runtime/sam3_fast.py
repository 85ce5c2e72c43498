"""SAM 3's fast CPU path: the ViT trunk (~90 % of an image embed) as an OpenVINO graph, in
bf16 where the CPU computes bf16 natively (AVX512-BF16 / AMX), else f32; the necks, the text
encoder, the concept heads and the instance predictor stay Meta's torch code (exact).

Export: Meta's ViT applies its 2-D RoPE with complex tensors (`view_as_complex`), which
OpenVINO's PyTorch frontend does not take, so the exported copy rotates with the same
cos/sin table in real arithmetic (`_RealRope`, equal to Meta's within float rounding; the
f32 graph's tolerance test bounds it). The graph is exported once per (model, exact
weights, OpenVINO version) into the runtime cache, like SAM 2's graphs.

Tolerance (tests/integration/test_sam3_fast.py, tiny architecture, seeded random weights;
docs/benchmarks.md for the real one): see `TOLERANCE`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from sam2serve.registry import ModelSpec
from sam2serve.runtime.openvino_export import BackendUnavailable, Precision, _openvino, probe
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_runtime import Sam3Runtime, load_model
from sam2serve.runtime.weights import file_sha256

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: What the fast path promises against the exact one, per precision, checked by the tests:
#: the trunk output's relative error (L2), the concept scores' largest absolute error, and
#: the smallest IoU of a kept instance's full-size mask with the exact runtime's.
TOLERANCE: dict[str, dict[str, float]] = {
    "f32": {"trunk_rel": 1e-4, "score_abs": 1e-4, "mask_iou_min": 0.99},
    "bf16": {"trunk_rel": 5e-2, "score_abs": 2e-2, "mask_iou_min": 0.9},
}


def _real_rope(self: torch.nn.Module, q: torch.Tensor, k: torch.Tensor):  # type: ignore[no-untyped-def]
    """Meta's `apply_rotary_enc` in real arithmetic: pairs (x0, x1) of the head dim rotate
    by the same angles (freqs_cis = cos + i sin)."""
    if not self.use_rope:
        return q, k
    cos = self.freqs_cis.real.float()  # (L, hd/2)
    sin = self.freqs_cis.imag.float()

    def rotate(x: torch.Tensor) -> torch.Tensor:
        xf = x.float().reshape(*x.shape[:-1], -1, 2)
        x0, x1 = xf[..., 0], xf[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2).type_as(x)

    return rotate(q), rotate(k)


class _TrunkGraph(torch.nn.Module):
    """(1, 3, S, S) normalized pixels -> the trunk's last output as (1, s, s, C) (NHWC, the
    trunk's own memory layout)."""

    def __init__(self, trunk: torch.nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)[-1].permute(0, 2, 3, 1)


def cache_dir_for(spec: ModelSpec, checkpoint: Path, cache_dir: Path) -> Path:
    ov = _openvino()
    version = ov.__version__.split("-")[0]
    sha = file_sha256(checkpoint)[:16]
    return Path(cache_dir) / f"{spec.model_id}-{sha}-ov{version}-sam3trunk-v{FORMAT_VERSION}"


def export_trunk(model: torch.nn.Module, target: Path) -> None:
    """Convert `model`'s ViT trunk to `target/trunk.xml` (atomic: a temp dir, then rename)."""
    ov = _openvino()
    started = time.perf_counter()
    trunk = model.backbone.vision_backbone.trunk
    size = int(model.inst_interactive_predictor.model.image_size)
    attns = [m for m in trunk.modules() if type(m).__name__ == "Attention"]
    for attn in attns:  # this model instance only, for the trace; removed below
        attn._apply_rope = types.MethodType(_real_rope, attn)
    try:
        with torch.no_grad(), on_device(torch.device("cpu")):
            graph = ov.convert_model(
                _TrunkGraph(trunk).eval(),
                example_input=(torch.zeros(1, 3, size, size),),
                input=[("x", [1, 3, size, size])],
            )
    finally:
        for attn in attns:
            del attn._apply_rope
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        ov.save_model(graph, tmp / "trunk.xml", compress_to_fp16=False)
        meta = {
            "openvino": ov.__version__,
            "format": FORMAT_VERSION,
            "export_seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported SAM 3 trunk to %s in %.1fs", target, time.perf_counter() - started)


def compile_trunk(path: Path, precision: Precision, threads: int = 0) -> Any:
    ov = _openvino()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(path / "trunk.xml"), "CPU", config)


class Sam3FastRuntime(Sam3Runtime):
    """`Sam3Runtime` with the ViT trunk on OpenVINO; everything else is the exact runtime's."""

    def __init__(
        self,
        model_id: str,
        model: torch.nn.Module,
        compiled_trunk: Any,
        precision: Precision,
    ) -> None:
        super().__init__(model_id, model, torch.device("cpu"))
        self.compiled_trunk = compiled_trunk
        self.precision = precision
        self.tolerance = TOLERANCE[precision]

    def concept(self, features, text, boxes_xyxy, box_labels):  # type: ignore[no-untyped-def]
        """The exact runtime's concept prompt; at bf16 under torch's CPU autocast (matmuls,
        convolutions and attention in bf16, the rest fp32): ~2x faster grounding, within
        `TOLERANCE["bf16"]["score_abs"]`."""
        if self.precision != "bf16":
            return super().concept(features, text, boxes_xyxy, box_labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().concept(features, text, boxes_xyxy, box_labels)

    @torch.inference_mode()
    def trunk(self, rgb: np.ndarray) -> torch.Tensor:
        pixels = self.preprocess(rgb).numpy()
        request = self.compiled_trunk.create_infer_request()
        nhwc = request.infer({0: pixels})[0]
        return torch.from_numpy(np.array(nhwc, dtype=np.float32, copy=True)).permute(0, 3, 1, 2)


def build_sam3_fast_runtime(
    spec: ModelSpec,
    checkpoint: Path,
    cache_dir: Path,
    precision: str = "auto",
    threads: int = 0,
) -> Sam3FastRuntime:
    """Load `spec` (strict, as the exact runtime), export its trunk once into `cache_dir`,
    compile it at `precision` ("auto": bf16 where native, else f32). Raises
    BackendUnavailable where OpenVINO cannot serve (callers fall back to the exact runtime)."""
    chosen = probe("auto" if precision == "auto" else precision)  # type: ignore[arg-type]
    model = load_model(spec, checkpoint, torch.device("cpu"))
    target = cache_dir_for(spec, checkpoint, cache_dir)
    if not (target / "meta.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{target}.lock"):
            if not (target / "meta.json").is_file():
                export_trunk(model, target)
    return Sam3FastRuntime(spec.model_id, model, compile_trunk(target, chosen, threads), chosen)


__all__ = ["BackendUnavailable", "Sam3FastRuntime", "build_sam3_fast_runtime"]
