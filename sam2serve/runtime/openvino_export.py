"""Export of SAM2's image encoder and rearranged mask decoder to OpenVINO graphs, cached on
disk under `cache_dir/<model_id>-<sha256[:16]>-ov<version>-v<N>`: built once per (model,
exact weights, OpenVINO version), by the first load or ahead of time (`build_cache`).
Also the cheap probe of whether OpenVINO can serve on this machine, and at which precision.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from filelock import FileLock

from sam2serve.registry import ModelSpec
from sam2serve.runtime.fast_decoder import DecoderPrep, FastMaskDecoder, token_bias
from sam2serve.runtime.torch_runtime import build_model
from sam2serve.runtime.weights import file_sha256

log = logging.getLogger(__name__)

Precision = Literal["bf16", "f32"]  # what OpenVINO computes in (INFERENCE_PRECISION_HINT)
#: what a runtime may be asked for: a precision, an int8 encoder, or a measured choice
Requested = Literal["auto", "bf16", "f32", "int8"]
FORMAT_VERSION = 2  # bump when the exported graphs change (2: decoder token_bias input)
GRAPHS = ("encoder", "prep", "decoder")


class BackendUnavailable(RuntimeError):
    """OpenVINO cannot serve here (not installed, no CPU plugin, unsupported device)."""


def _openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:  # the optional backend is not installed
        raise BackendUnavailable(
            f"openvino is not importable ({exc}); pip install openvino"
        ) from exc
    return openvino


def probe(precision: Requested = "auto") -> Precision:
    """Cheap check that OpenVINO's CPU plugin works here; returns the precision to compute in.

    "auto" and "int8" (an int8 encoder; the rest of the graphs) give bf16 where the CPU
    computes bf16 natively, else f32. Raises BackendUnavailable when the backend is missing,
    or bf16 was asked for without support.

    Native bf16 = the plugin lists BF16 and a bf16 graph compiles: the capability list
    reads cpuid, while the kernels honour an ISA cap (ONEDNN_MAX_CPU_ISA=AVX2, as set to
    emulate a CPU without bf16: `bench.embed_runtimes --emulate-avx2`); there the list still
    says BF16 but every bf16 compile fails.
    """
    ov = _openvino()
    try:
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as exc:
        raise BackendUnavailable(f"OpenVINO CPU plugin unusable: {exc}") from exc
    has_bf16 = "BF16" in caps and bf16_compiles()
    if precision in ("auto", "int8"):
        return "bf16" if has_bf16 else "f32"
    if precision == "bf16" and not has_bf16:
        raise BackendUnavailable("this CPU has no native bf16 (AVX512-BF16/AMX); use f32")
    return precision


@functools.cache
def bf16_compiles() -> bool:
    """Whether OpenVINO's CPU plugin compiles a (tiny) graph computing in bf16 here; checked
    once per process (~0.2 s)."""
    ov = _openvino()
    try:
        from openvino import opset13 as ops

        x = ops.parameter([1, 16], ov.Type.f32)
        w = ops.constant(ov.Tensor(ov.Type.f32, ov.Shape([16, 16])))
        graph = ov.Model([ops.matmul(x, w, False, False)], [x])
        compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
        return bool(compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16)
    except Exception as exc:  # the plugin refuses bf16 (e.g. an ISA cap below AVX512-BF16)
        log.info("OpenVINO does not compile bf16 here: %s", exc)
        return False


def cache_key_dir(
    spec: ModelSpec,
    checkpoint: Path,
    cache_dir: Path,
    kind: str = "",
    version: int = FORMAT_VERSION,
) -> Path:
    """Where the exported graphs for (model, exact weights, OpenVINO version) live; `kind`
    names another set of graphs of the same model (e.g. "video"), `version` its format."""
    ov = _openvino()
    ov_version = ov.__version__.split("-")[0]
    sha = file_sha256(checkpoint)[:16]
    tag = f"-{kind}" if kind else ""
    return Path(cache_dir) / f"{spec.model_id}-{sha}-ov{ov_version}{tag}-v{version}"


class _EncoderGraph(torch.nn.Module):
    """(1, 3, S, S) normalised pixels -> image_embed, feat_s0, feat_s1 (as TorchRuntime)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.model
        fpn = model.forward_image(x)["backbone_fpn"][-model.num_feature_levels :]
        embed = fpn[-1]
        if model.directly_add_no_mem_embed:
            embed = embed + model.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, fpn[0], fpn[1]


def is_exported(spec: ModelSpec, checkpoint: Path, cache_dir: Path) -> bool:
    """Whether the graphs for (model, exact weights, OpenVINO version) are on disk already."""
    return (cache_key_dir(spec, checkpoint, cache_dir) / "meta.json").is_file()


def build_cache(spec: ModelSpec, checkpoint: Path, cache_dir: Path) -> Path:
    """Export the three graphs for `checkpoint` once; reuse them when present. Returns the
    key directory. Processes sharing `cache_dir` export once (see `build_once`)."""
    target = cache_key_dir(spec, checkpoint, cache_dir)
    return build_once(target, lambda: _image_graphs(spec, checkpoint), spec, checkpoint)


def build_once(
    target: Path,
    convert: Callable[[], dict[str, Any]],
    spec: ModelSpec,
    checkpoint: Path,
    version: int = FORMAT_VERSION,
) -> Path:
    """Save `convert()`'s OpenVINO graphs ({name: ov.Model}, saved as `name.xml`) into
    `target` unless it holds them already; returns `target`. Processes sharing the cache
    export once: a file lock beside `target` makes the others wait and reuse the result,
    and a finished export appears by atomic rename (a crashed exporter leaves no
    half-written graphs)."""
    if (target / "meta.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if (target / "meta.json").is_file():  # another process exported while we waited
            return target
        started = time.perf_counter()
        _save(target, convert(), spec, checkpoint, version, started)
    return target


def _image_graphs(spec: ModelSpec, checkpoint: Path) -> dict[str, Any]:
    """The image path's graphs: encoder, per-image decoder preparation, decoder."""
    ov = _openvino()
    model = build_model(spec, checkpoint, torch.device("cpu"))
    size = int(model.image_size)
    prep = DecoderPrep(model).eval()
    decoder = FastMaskDecoder(model, prep).eval()
    with torch.no_grad():
        pixels = torch.zeros(1, 3, size, size)
        feats = _EncoderGraph(model).eval()(pixels)
        prepped = prep(*feats)
        sparse = torch.zeros(2, 4, prepped[0].shape[-1])
        bias = token_bias(2, 4, 3)
        return {
            "encoder": ov.convert_model(
                _EncoderGraph(model).eval(),
                example_input=(pixels,),
                input=[("x", list(pixels.shape))],
            ),
            "prep": ov.convert_model(
                prep,
                example_input=feats,
                input=[
                    (n, list(t.shape))
                    for n, t in zip(("image_embed", "feat_s0", "feat_s1"), feats, strict=True)
                ],
            ),
            "decoder": ov.convert_model(
                decoder,
                example_input=(*prepped, sparse, bias),
                input=[
                    *(
                        (n, list(t.shape))
                        for n, t in zip(("src", "k1", "v1", "q1", "s1", "s0"), prepped, strict=True)
                    ),
                    ("sparse", [-1, -1, int(sparse.shape[-1])]),
                    ("token_bias", [-1, -1]),
                ],
            ),
        }


def _save(
    target: Path,
    graphs: dict[str, Any],
    spec: ModelSpec,
    checkpoint: Path,
    version: int,
    started: float,
) -> None:
    """Write the graphs beside `target` and move them into it (one rename)."""
    ov = _openvino()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        for name, graph in graphs.items():
            ov.save_model(graph, tmp / f"{name}.xml", compress_to_fp16=False)
        meta = {
            "model_id": spec.model_id,
            "checkpoint": checkpoint.name,
            "openvino": ov.__version__,
            "format": version,
            "graphs": sorted(graphs),
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
    log.info(
        "exported %s OpenVINO graphs (%s) to %s in %.1fs",
        spec.model_id,
        ", ".join(graphs),
        target,
        time.perf_counter() - started,
    )
