"""int8 image encoder: NNCF post-training quantization of the exported OpenVINO encoder graph.

Calibrated once, at export time, on the images bundled in `calibration/` (see its
SOURCES.md: distinct from the benchmark and test photos). The quantized graph is cached
beside the float graphs, in the key directory of (model, checkpoint sha256, OpenVINO
version), under a name that carries the recipe's hash (recipe, NNCF version, calibration
bytes): `encoder-int8-<recipe id>.xml`. A changed recipe quantizes anew; an unchanged one is
reused by every process sharing the cache dir (file lock, atomic rename, as the export).

What stays in float: the FPN neck and the mask decoder's high-res projections (`conv_s0`,
`conv_s1`: their outputs are the skip features the masks' edges come from) and the patch
embedding (it sees raw pixels); the trunk's linear layers (most of the FLOPs) run in int8,
the qkv projections behind a window partition's Pad too (their own quantizer, added after
NNCF: `quantize_behind_pads`). Tried and not kept (docs/benchmarks.md, issue 17): NNCF's
performance preset (symmetric activations) and the neck in int8 (fidelity down, no speed).
Fidelity (mask IoU vs Meta's fp32 predictor) is asserted in tests and recorded in
docs/benchmarks.md; the measured runtime choice checks it again on the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image

from sam2serve.runtime.openvino_export import BackendUnavailable, _openvino

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
#: images NNCF calibrates on (one sample each)
CALIBRATION = ("rocket", "coins", "immunohistochemistry", "retina")
#: held out of the calibration: the measured choice's fidelity check image
CHECK = "camera"

#: everything that decides the quantized graph (with the NNCF version and the images' bytes)
RECIPE: dict[str, Any] = {
    "tool": "nncf.quantize",
    "model_type": "transformer",
    "preset": "default",  # NNCF's default for transformers (mixed: asymmetric activations)
    "ignored_patterns": [".*image_encoder\\.neck.*", ".*sam_mask_decoder.*", ".*patch_embed.*"],
    "smooth_quant": False,
    "fast_bias_correction": True,
    "images": list(CALIBRATION),
    "mirrored": False,  # mirrored copies as extra samples: off (calibration time grows with them)
    "quantize_behind_pads": True,  # see quantize_behind_pads
}
#: What changes on a CPU without native bf16 (the graph computes in f32 around the int8
#: ops): the attention (OpenVINO's ScaledDotProductAttention, q / k / v from the qkv
#: projection) stays float. Measured on an Ice Lake Xeon (AVX512-VNNI, no AVX512-BF16):
#: with int8 attention inputs the features of stages 2-4 came out 24-30 % off the f32
#: graph's (mask IoU vs Meta 0.90 mean, 0.21 min), with it float 1 % (docs/benchmarks.md);
#: on a CPU with native bf16 the same int8 graph is within 2 %.
F32_RECIPE: dict[str, Any] = {**RECIPE, "ignored_types": ["ScaledDotProductAttention"]}


def recipe(inference: str = "bf16") -> dict[str, Any]:
    """The recipe for a graph computing at `inference` ("bf16" | "f32") around its int8 ops."""
    return F32_RECIPE if inference == "f32" else RECIPE


def nncf_version() -> str | None:
    """The installed NNCF's version (without importing it), or None when it is absent."""
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        return None


def _image_path(name: str) -> Path:
    return CALIBRATION_DIR / f"{name}.jpg"


def load_image(name: str) -> np.ndarray:
    """A bundled image as (H, W, 3) uint8 RGB."""
    with Image.open(_image_path(name)) as im:
        return np.asarray(im.convert("RGB"))


def recipe_id(inference: str = "bf16") -> str:
    """Short hash of the recipe, the NNCF version and the calibration images' bytes."""
    digest = hashlib.sha256(json.dumps(recipe(inference), sort_keys=True).encode())
    digest.update(f"nncf={nncf_version()}".encode())
    for name in CALIBRATION:
        digest.update(_image_path(name).read_bytes())
    return digest.hexdigest()[:12]


def int8_encoder_name(inference: str = "bf16") -> str:
    return f"encoder-int8-{recipe_id(inference)}.xml"


def is_quantized(graphs_dir: Path, inference: str = "bf16") -> bool:
    return (Path(graphs_dir) / int8_encoder_name(inference)).is_file()


def build_int8_encoder(
    graphs_dir: Path, preprocess: Callable[[np.ndarray], np.ndarray], inference: str = "bf16"
) -> Path:
    """Quantize `graphs_dir/encoder.xml` once; reuse it when present. Returns the int8 graph.

    preprocess: (H, W, 3) uint8 -> (1, 3, S, S) float32, the encoder's input (the runtime's
    transforms). inference: what the graph computes in around its int8 ops on this CPU
    ("bf16" | "f32": `recipe`). Raises BackendUnavailable when NNCF is not installed.
    """
    graphs_dir = Path(graphs_dir)
    target = graphs_dir / int8_encoder_name(inference)
    if target.is_file():
        return target
    if nncf_version() is None:
        raise BackendUnavailable("nncf is not installed (pip install nncf): no int8 encoder")
    with FileLock(graphs_dir / f"{target.stem}.lock"):
        if target.is_file():  # another process quantized while we waited
            return target
        _quantize(graphs_dir, target, preprocess, inference)
    return target


def _quantize(
    graphs_dir: Path, target: Path, preprocess: Callable[[np.ndarray], np.ndarray], inference: str
) -> None:
    import nncf  # heavy import (~seconds): only when a quantization runs

    ov = _openvino()
    started = time.perf_counter()
    chosen = recipe(inference)
    samples = []
    for name in CALIBRATION:
        x = np.ascontiguousarray(preprocess(load_image(name)), dtype=np.float32)
        samples.append(x)
        if chosen["mirrored"]:
            samples.append(np.ascontiguousarray(x[..., ::-1]))
    graph = ov.Core().read_model(graphs_dir / "encoder.xml")
    quantized = nncf.quantize(
        graph,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        fast_bias_correction=chosen["fast_bias_correction"],
        ignored_scope=nncf.IgnoredScope(
            patterns=chosen["ignored_patterns"],
            types=chosen.get("ignored_types", []),
            validate=False,
        ),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)  # off
        ),
    )
    if chosen["quantize_behind_pads"]:
        quantize_behind_pads(quantized, samples)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", dir=graphs_dir))
    try:
        ov.save_model(quantized, tmp / target.name, compress_to_fp16=False)
        meta = {
            **chosen,
            "nncf": nncf_version(),
            "recipe_id": recipe_id(inference),
            "seconds": round(time.perf_counter() - started, 1),
        }
        (tmp / f"{target.stem}.json").write_text(json.dumps(meta, indent=1))
        # the weights and the note first, the graph last: a present .xml is a complete graph
        for suffix in (".bin", ".json", ".xml"):
            (tmp / f"{target.stem}{suffix}").rename(graphs_dir / f"{target.stem}{suffix}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "quantized the encoder to int8 (%s) in %.1fs", target.name, time.perf_counter() - started
    )


#: ops between a quantizer and its matmul that OpenVINO moves the dequantization through
_LAYOUT_OPS = ("Reshape", "Transpose")


def _int8_weights(matmul: Any) -> bool:
    """Whether the matmul's weights are NNCF's int8 constants (Constant i8 -> Convert -> ...)."""
    node = matmul.input_value(1).get_node()
    while node.get_type_name() in ("Multiply", "Subtract", "Convert", *_LAYOUT_OPS):
        if node.get_type_name() == "Convert":
            return node.input_value(0).get_element_type().get_type_name() in ("i8", "u8")
        node = node.input_value(0).get_node()
    return False


def _quantized_input(matmul: Any) -> bool:
    node = matmul.input_value(0).get_node()
    while node.get_type_name() in _LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


def quantize_behind_pads(graph: Any, samples: list[np.ndarray]) -> list[str]:
    """Give a FakeQuantize of its own to every int8-weight matmul whose activations reach it
    through something other than layout ops; returns their names.

    Why: in the Hiera trunk the windowed attentions whose window does not divide the
    feature map (hiera_tiny: blocks 4, 6, 8, 10, 11) zero-pad before the window partition.
    NNCF puts the qkv projection's activation quantizer before that Pad, and with its
    asymmetric activations (zero point != 0) OpenVINO cannot carry the dequantization
    through the Pad: those projections ran in bf16 on int8 weights (decompressed), 8% of
    the int8 encoder's time. Their own quantizer (range: min/max over the calibration
    samples, 0 included: the padding) makes them int8 matmuls like the others.
    """
    ov = _openvino()
    from openvino import opset13 as ops

    found = [
        op
        for op in graph.get_ordered_ops()
        if op.get_type_name() == "MatMul" and _int8_weights(op) and not _quantized_input(op)
    ]
    if not found:
        return []
    probe = graph.clone()  # the same nodes by name, with their inputs as extra outputs
    names = [op.get_friendly_name() for op in found]
    by_name = {op.get_friendly_name(): op for op in probe.get_ordered_ops()}
    first_extra = len(probe.outputs)
    probe.add_outputs([by_name[name].input_value(0) for name in names])
    compiled = ov.Core().compile_model(probe, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    low = np.zeros(len(found), np.float32)  # 0 stays inside the range: the padding is 0
    high = np.zeros(len(found), np.float32)
    for x in samples:
        request.infer([x])
        for i in range(len(found)):
            values = request.get_output_tensor(first_extra + i).data
            low[i] = min(low[i], float(values.min()))
            high[i] = max(high[i], float(values.max()))
    for op, lo, hi in zip(found, low, high, strict=True):
        lo_c, hi_c = (ops.constant(np.array(v, np.float32)) for v in (lo, hi))
        fq = ops.fake_quantize(op.input_value(0), lo_c, hi_c, lo_c, hi_c, 256)
        op.input(0).replace_source_output(fq.output(0))
    graph.validate_nodes_and_infer_types()
    log.info("int8: own quantizers for %d matmuls behind a Pad", len(found))
    return names
