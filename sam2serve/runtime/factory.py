"""Runtime selection: the `Settings.runtime` value -> the `ModelPool` factory that builds it.

The names come from `config.RuntimeName`, the settings type itself; nothing here repeats them.
The fast runtime's module (and OpenVINO) is imported only when a fast runtime is chosen. The
video tracker's fast parts (`video_parts`) follow the same choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import torch

from sam2serve.config import RuntimeName, Settings
from sam2serve.registry import ModelSpec
from sam2serve.runtime.pool import RuntimeFactory, sam3_runtime_factory, torch_runtime_factory
from sam2serve.runtime.video_tracker import ModelParts

log = logging.getLogger(__name__)

#: Every accepted `Settings.runtime` value, in the settings type's order.
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)


def runtime_factory(settings: Settings, *, background: bool = False) -> RuntimeFactory:
    """The factory for `settings.runtime`:

    - "torch": Meta's fp32 model code on `settings.device`, exact;
    - "auto" / "openvino": OpenVINO with the image encoder chosen by measurement on this
      machine, once per runtime cache (f32; bf16 where the CPU has native bf16; int8), the
      fastest within the fast path's tolerance (`runtime.choice`); the torch runtime off CPU
      or where OpenVINO cannot run;
    - "openvino-bf16" / "openvino-f32" / "openvino-int8": OpenVINO at that precision, pinned
      (int8: the quantized encoder, the rest bf16 where native, else f32; still falling back
      to the torch runtime where impossible).

    background (fast runtimes): a model whose graphs are not exported yet serves on the exact
    torch runtime at once while the export and compile run on a background thread
    (`runtime.preparing.PreparingRuntime`); without it the first load waits for the export.
    """
    name = settings.runtime
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    if name == "torch":
        return torch_runtime_factory
    from sam2serve.runtime.openvino_runtime import make_factory

    precision = name.removeprefix("openvino-") if name.startswith("openvino-") else "auto"
    return make_factory(
        settings.runtime_cache_dir,
        precision,  # type: ignore[arg-type]  # "bf16" | "f32" | "int8" | "auto", from RuntimeName
        settings.embed_threads,
        settings.decode_threads,
        background=background,
    )


def video_parts(
    settings: Settings, spec: ModelSpec, checkpoint: Path, device: torch.device, threads: int = 0
) -> ModelParts | None:
    """The fast video path's compiled memory attention + memory encoder for
    `settings.runtime` (OpenVINO at the image runtime's precision: bf16 where the CPU has it
    natively, else f32; exported once into `settings.runtime_cache_dir`), or None where the
    tracker keeps upstream's torch modules: the torch runtime, a non-CPU device, OpenVINO
    unavailable (logged with the reason). threads: OpenVINO threads (0 = one per core)."""
    if settings.runtime == "torch" or device.type != "cpu":
        return None
    from sam2serve.runtime.openvino_video import BackendUnavailable, load_video_graphs

    name = settings.runtime
    precision = (
        name.removeprefix("openvino-") if name in ("openvino-bf16", "openvino-f32") else "auto"
    )
    try:
        return load_video_graphs(spec, checkpoint, settings.runtime_cache_dir, precision, threads)
    except BackendUnavailable as exc:
        log.warning("fast video graphs unavailable, memory attention stays on torch: %s", exc)
        return None


def sam3_factory(settings: Settings) -> Callable[[ModelSpec, Path, torch.device], Any]:
    """The `ModelPool` factory for SAM 3 specs under `settings.runtime`:

    - "torch" and "openvino-f32": Meta's fp32 model code, exact (`Sam3Runtime`): pinning
      f32 asks for no reduced precision, and SAM 3 has no f32 graph faster than torch's;
    - "openvino-bf16": on a CPU with native bf16, the bf16 fast path (`sam3_fast.
      Sam3FastRuntime`: the image backbone under torch's bf16 autocast, tolerance in
      `sam3_fast.TOLERANCE`);
    - any other value ("auto", "openvino", "openvino-int8"): on a CPU with
      native bf16 and int8 units (VNNI / AMX), the int8 path (`sam3_int8.Sam3Int8Runtime`:
      the ViT trunk's linear layers in int8, the rest as the bf16 path; measured faster than
      bf16 on such a CPU, docs/benchmarks.md; tolerance in `sam3_int8.TOLERANCE`); on a CPU
      with int8 units and no native bf16 (Ice Lake), the same int8 trunk with everything
      else fp32 (`sam3_int8.Sam3Int8Fp32Runtime`); else the bf16 fast path where bf16 is
      native;
    - the exact runtime elsewhere (CUDA, CPUs with neither: bf16 emulated, slower).
    SAM 3 has no OpenVINO graph: measured, it was no faster than autocast and costly to export.
    """
    if settings.runtime in ("torch", "openvino-f32"):
        return sam3_runtime_factory
    want_int8 = settings.runtime != "openvino-bf16"

    def build(spec: ModelSpec, checkpoint: Path, device: torch.device) -> Any:
        from sam2serve.runtime.sam3_fast import build_sam3_fast_runtime, native_bf16
        from sam2serve.runtime.sam3_int8 import build_sam3_int8_runtime, int8_available

        if want_int8 and int8_available(device):
            return build_sam3_int8_runtime(spec, checkpoint, device)
        if device.type != "cpu" or not native_bf16():
            return sam3_runtime_factory(spec, checkpoint, device)
        return build_sam3_fast_runtime(spec, checkpoint, device)

    return build
