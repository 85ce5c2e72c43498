"""Emulating a CPU without native bf16 on one that has it, by capping the instruction sets
the math libraries may use (`python -m bench.embed_runtimes --emulate-avx2`).

The caps are read when the libraries load, so the bench re-executes itself with them set.
What takes effect (checked on a Zen 4 with AVX512-BF16/VNNI, 2026-12-07; `evidence()`
records it with every emulated run):

- oneDNN, in torch and in OpenVINO's CPU plugin: `ONEDNN_MAX_CPU_ISA` (and its older name
  `DNNL_MAX_CPU_ISA`). Convolutions and int8 matmuls then run AVX2 kernels, and OpenVINO
  refuses to compile bf16 graphs, though its OPTIMIZATION_CAPABILITIES still lists BF16
  (hence `openvino_export.bf16_compiles`).
- ATen's vectorized kernels: `ATEN_CPU_CAPABILITY`.
- MKL (torch's fp32 matmuls): `MKL_ENABLE_INSTRUCTIONS`; on AMD CPUs MKL takes its AVX2
  path anyway and its verbose mode does not name the ISA: not verified.

What does not: OpenVINO runs f32 FullyConnected layers on MLAS, which picks its kernels
from cpuid with no cap, so f32 matmuls keep AVX512 under emulation (f32 reads optimistic).
A real AVX2-only CPU also differs in clocks, cache and int8 (no AVX512-VNNI: AVX2
vpmaddubsw or AVX-VNNI): emulated figures are a hint, not a measurement of such a CPU.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: the caps for "AVX2, no AVX512 (so no bf16, no AVX512-VNNI)"
AVX2_CAPS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
#: set in the re-executed process: the caps are in force (and it must not re-execute again)
MARKER = "SAM2SERVE_BENCH_EMULATED"


def active() -> str | None:
    """The emulation this process runs under ("avx2"), or None."""
    return os.environ.get(MARKER)


def reexec_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the capped process: `environ` (default os.environ) plus the caps."""
    return {**(os.environ if environ is None else environ), **AVX2_CAPS, MARKER: "avx2"}


def reexec(module: str, argv: list[str]) -> None:
    """Replace this process by `python -m module argv...` under the AVX2 caps (no return)."""
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], reexec_env())


def evidence() -> dict[str, Any]:
    """What the caps changed here: ATen's kernel level, whether OpenVINO compiles bf16, and
    the kernels OpenVINO's plugin picks for a small conv + matmul graph (f32)."""
    import numpy as np
    import openvino as ov
    import torch
    from openvino import opset13 as ops

    from sam2serve.runtime.openvino_export import bf16_compiles

    x = ops.parameter([1, 64, 32, 32], ov.Type.f32)
    rng = np.random.default_rng(0)
    conv = ops.convolution(
        x, ops.constant(rng.random((64, 64, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1]
    )
    flat = ops.reshape(conv, ops.constant(np.array([1024, 64], np.int64)), False)
    out = ops.matmul(flat, ops.constant(rng.random((64, 64), np.float32)), False, False)
    # the hint is needed: without one the plugin defaults to bf16 (from cpuid), which the
    # capped kernels refuse ("object is not initialized")
    config = {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(ov.Model([out], [x]), "CPU", config)
    request = compiled.create_infer_request()
    request.infer([np.zeros((1, 64, 32, 32), np.float32)])
    kernels = sorted(
        {
            f"{p.node_type}:{p.exec_type}"
            for p in request.get_profiling_info()
            if p.node_type in ("Convolution", "FullyConnected", "MatMul")
        }
    )
    return {
        "caps": {k: os.environ.get(k) for k in AVX2_CAPS},
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # from cpuid: still lists BF16 under the cap
        "openvino_capabilities": ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
        "openvino_compiles_bf16": bf16_compiles(),
        "openvino_f32_kernels": kernels,
    }
