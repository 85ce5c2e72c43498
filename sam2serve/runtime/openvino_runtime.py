"""The fast CPU runtime: SAM2's image encoder and mask decoder compiled by OpenVINO.

* embed: the image encoder (+ the decoder's high-res projections and no-memory embedding,
  exactly what `TorchRuntime.embed` computes) as one OpenVINO graph, bf16 on CPUs that have
  native bf16 (AVX512-BF16 / AMX), f32 otherwise. Features are stored as bfloat16
  (8 MiB per 1024 px image instead of 16 MiB).
* decode: `FastMaskDecoder` (one batched call for all prompts, prompt-independent work
  done once per image and memoised for the last few images) compiled by OpenVINO; the
  prompt encoder, upscaling and mask-input refinement stay in torch (the latter through the
  torch runtime, exact).

Exported graphs are cached on disk under `cache_dir/<model_id>-<sha256[:16]>-ov<version>-v<N>`
(built once, lazily on first load or ahead of time with `build_cache`); OpenVINO's compiled
blobs live beside them. Fidelity vs the torch runtime and Meta's predictor is asserted in
tests (mask IoU).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from filelock import FileLock

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Decoded, Features, PromptBatch, Runtime
from sam2serve.runtime.fast_decoder import token_bias
from sam2serve.runtime.memory import pin_mmap_threshold
from sam2serve.runtime.openvino_export import (
    GRAPHS,
    BackendUnavailable,
    Precision,
    _openvino,
    build_cache,
    is_exported,
    probe,
)
from sam2serve.runtime.pool import RuntimeFactory, torch_runtime_factory
from sam2serve.runtime.preparing import PreparingRuntime
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model

log = logging.getLogger(__name__)

PREP_MEMO = 4  # images whose per-image decoder work is kept (~18 MiB each in bf16)
# The CPU plugin keeps compiled state per input shape of the decoder graph (~8.5 MiB per
# shape, up to its 5000-entry default cache: memory grew without bound with the prompt
# shapes users send), and working buffers sized by the largest shape seen. The decoder
# therefore only ever runs at a few padded shapes: prompt tokens rounded up to a power of
# two (padding masked out of attention, exact), one prompt per call, except at the smallest
# token count (one point, or a box), where DECODE_CHUNK prompts share a call (rows are
# independent, exact; segment-everything's grid and multi-click requests batch there, and on
# CPU two one-row calls cost about what one two-row call does): at most 7 + 1 shapes. Each
# shape costs ~13-19 MiB on a 1024 px model. The runtime cache is also capped. Measured
# figures in docs/reliability.md.
DECODE_CHUNK = 2
MIN_TOKENS = 2  # the smallest token bucket: one point + the padding point, or a box
DECODE_CACHE_CAPACITY: int | None = 32


def bucket(n: int, minimum: int = 1) -> int:
    """n rounded up to a power of two (at least `minimum`)."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def _bf16_tensor(ov: Any, x: torch.Tensor) -> Any:
    """torch tensor -> new OpenVINO bf16 tensor (OpenVINO shows bf16 data as a 16-bit view)."""
    t = ov.Tensor(ov.Type.bf16, ov.Shape(list(x.shape)))
    bits = x.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    np.copyto(t.data.view(np.int16), bits)
    return t


def _to_torch(ov: Any, t: Any) -> torch.Tensor:
    """OpenVINO output tensor -> torch copy (bf16 stays bf16)."""
    if t.element_type == ov.Type.bf16:
        return torch.from_numpy(t.data.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(t.data, copy=True))


class _Compiled:
    """One compiled graph with one infer request; calls are serialised by a lock."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()


class OpenVinoRuntime:
    """Runtime protocol (see runtime.base) on OpenVINO; CPU only."""

    def __init__(
        self,
        model_id: str,
        model: torch.nn.Module,
        graphs_dir: Path,
        precision: Precision = "bf16",
        embed_threads: int = 0,
        decode_threads: int = 0,
        *,
        decode_cache_capacity: int | None = DECODE_CACHE_CAPACITY,
        bucket_shapes: bool = True,
    ) -> None:
        """embed_threads / decode_threads: OpenVINO threads of the encoder / of the
        decoder graphs (0 = one per core). decode_cache_capacity: per-shape entries the CPU
        plugin keeps for the decoder (None = OpenVINO's default); bucket_shapes: run the
        decoder at padded shapes only (see DECODE_CHUNK); off, every prompt shape is its own."""
        self._ov = ov = _openvino()
        self.model_id = model_id
        self.device = torch.device("cpu")
        self.precision = precision
        # the torch runtime gives transforms, upscale and the exact mask-input path
        self._torch = TorchRuntime(model_id, model, self.device)
        model.image_encoder = torch.nn.Identity()  # weights live in the compiled encoder
        self._storage = torch.bfloat16 if precision == "bf16" else torch.float32
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(graphs_dir / f"compiled-{precision}")})
        graphs = {}
        for name in GRAPHS:
            config: dict[str, Any] = {
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",
            }
            threads = embed_threads if name == "encoder" else decode_threads
            if threads > 0:
                config["INFERENCE_NUM_THREADS"] = threads
            if name == "decoder" and decode_cache_capacity is not None:
                config["CPU_RUNTIME_CACHE_CAPACITY"] = decode_cache_capacity
            if name != "encoder":
                # OpenVINO's fused attention kernels are slow for the decoder's few-token
                # attentions (plain matmuls win); the encoder's attention likes them
                config["SNIPPETS_MODE"] = "DISABLE"
            graph = core.read_model(graphs_dir / f"{name}.xml")
            if precision == "bf16":
                graph = self._bf16_io(graph, name)
            graphs[name] = _Compiled(core.compile_model(graph, "CPU", config))
        self._encoder, self._prep, self._decoder = (graphs[n] for n in GRAPHS)
        self._memo: OrderedDict[int, tuple[weakref.ref, list[Any]]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self.bucket_shapes = bucket_shapes

    def _bf16_io(self, graph: Any, name: str) -> Any:
        """Features and per-image decoder inputs cross graph borders as bf16 (no f32 copy)."""
        ppp = self._ov.preprocess.PrePostProcessor(graph)
        if name in ("prep", "decoder"):
            for i in range(3 if name == "prep" else 6):
                ppp.input(i).tensor().set_element_type(self._ov.Type.bf16)
        if name in ("encoder", "prep"):
            for i in range(len(graph.outputs)):
                ppp.output(i).tensor().set_element_type(self._ov.Type.bf16)
        return ppp.build()

    @property
    def low_res_size(self) -> int:
        return self._torch.low_res_size

    def embed(self, rgb: np.ndarray) -> Features:
        """rgb: (H, W, 3) uint8 -> Features stored as bf16 (bf16 precision) or f32."""
        x = self._torch.transforms(rgb)[None].numpy()
        enc = self._encoder
        with enc.lock:
            enc.request.infer([x])
            outs = [_to_torch(self._ov, enc.request.get_output_tensor(i)) for i in range(3)]
        outs = [t.to(self._storage) for t in outs]
        return Features(
            image_embed=outs[0],
            high_res=(outs[1], outs[2]),
            orig_hw=(int(rgb.shape[0]), int(rgb.shape[1])),
        )

    def _prepared(self, features: Features) -> list[Any]:
        """The image's prompt-independent decoder inputs, memoised per Features object."""
        key = id(features.image_embed)
        with self._memo_lock:
            hit = self._memo.get(key)
            if hit is not None and hit[0]() is features.image_embed:
                self._memo.move_to_end(key)
                return hit[1]
        inputs = [features.image_embed, *features.high_res]
        prep = self._prep
        with prep.lock:
            if self.precision == "bf16":
                for i, t in enumerate(inputs):
                    prep.request.set_input_tensor(i, _bf16_tensor(self._ov, t))
                prep.request.infer()
            else:
                prep.request.infer([t.float().numpy() for t in inputs])
            # copies: the request reuses its output buffers on the next call
            prepared = [self._copy(prep.request.get_output_tensor(i)) for i in range(6)]
        with self._memo_lock:
            self._memo[key] = (weakref.ref(features.image_embed), prepared)
            while len(self._memo) > PREP_MEMO:
                self._memo.popitem(last=False)
        return prepared

    def _copy(self, t: Any) -> Any:
        copy = self._ov.Tensor(t.element_type, t.shape)
        t.copy_to(copy)
        return copy

    @torch.inference_mode()
    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        """All N prompts in one compiled decoder call -> low_res (N, C, m, m), scores (N, C)."""
        if prompts.mask_input is not None and (prompts.has_mask is None or prompts.has_mask.any()):
            return self._torch.decode(_as_float(features), prompts, multimask)
        h, w = features.orig_hw
        coords = torch.as_tensor(prompts.coords, dtype=torch.float32)
        coords = self._torch.transforms.transform_coords(coords, normalize=True, orig_hw=(h, w))
        labels = torch.as_tensor(prompts.labels, dtype=torch.int32)
        encoder = self._torch.model.sam_prompt_encoder
        sparse, _ = encoder(points=(coords, labels), boxes=None, masks=None)
        prepared = self._prepared(features)
        masks, iou = self._run_decoder(prepared, sparse)
        md = self._torch.model.sam_mask_decoder
        if multimask:
            masks, iou = masks[:, 1:], iou[:, 1:]
        elif md.dynamic_multimask_via_stability:
            masks, iou = md._dynamic_multimask_via_stability(masks, iou)
        else:
            masks, iou = masks[:, 0:1], iou[:, 0:1]
        return Decoded(low_res=masks.float(), scores=iou.float())

    def _run_decoder(
        self, prepared: list[Any], sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sparse (N, K, D) prompt embeddings -> all masks (N, M, m, m), IoU (N, M); at padded
        shapes (see DECODE_CHUNK) unless bucket_shapes is off."""
        n, k, _ = sparse.shape
        if not self.bucket_shapes:
            return self._infer(prepared, sparse, token_bias(n, k, k))
        kb = bucket(k, MIN_TOKENS)
        padded = torch.nn.functional.pad(sparse, (0, 0, 0, kb - k))
        rows_per_call = DECODE_CHUNK if kb == MIN_TOKENS else 1
        outs = []
        for start in range(0, n, rows_per_call):
            chunk = padded[start : start + rows_per_call]
            rows = chunk.shape[0]
            nb = bucket(rows)
            if nb > rows:  # copies of the last prompt; their results are dropped
                chunk = torch.cat([chunk, chunk[-1:].expand(nb - rows, -1, -1)])
            masks, iou = self._infer(prepared, chunk, token_bias(nb, kb, k))
            outs.append((masks[:rows], iou[:rows]))
        if len(outs) == 1:
            return outs[0]
        return torch.cat([m for m, _ in outs]), torch.cat([i for _, i in outs])

    def _infer(
        self, prepared: list[Any], sparse: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dec = self._decoder
        with dec.lock:
            for i, t in enumerate(prepared):
                dec.request.set_input_tensor(i, t)
            dec.request.set_input_tensor(6, self._ov.Tensor(np.ascontiguousarray(sparse.numpy())))
            dec.request.set_input_tensor(7, self._ov.Tensor(np.ascontiguousarray(bias.numpy())))
            dec.request.infer()
            masks = torch.from_numpy(np.array(dec.request.get_output_tensor(0).data, copy=True))
            iou = torch.from_numpy(np.array(dec.request.get_output_tensor(1).data, copy=True))
        return masks, iou

    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, m, m) logits -> (N, H, W) logits, as the torch runtime."""
        return self._torch.upscale(low_res, orig_hw)


def _as_float(features: Features) -> Features:
    return Features(
        image_embed=features.image_embed.float(),
        high_res=tuple(t.float() for t in features.high_res),
        orig_hw=features.orig_hw,
    )


def load_runtime(
    spec: ModelSpec,
    checkpoint: Path,
    cache_dir: Path,
    precision: Precision | Literal["auto"] = "auto",
    embed_threads: int = 0,
    decode_threads: int = 0,
    **options: Any,
) -> OpenVinoRuntime:
    """Probe, export once (cached on disk), compile. Raises BackendUnavailable. `options`:
    OpenVinoRuntime's keyword-only ones (decode_cache_capacity, bucket_shapes)."""
    chosen = probe(precision)
    pin_mmap_threshold()
    graphs_dir = build_cache(spec, checkpoint, cache_dir)
    model = build_model(spec, checkpoint, torch.device("cpu"))
    # one compile per cache dir at a time: the first writes OpenVINO's compiled blobs, the
    # others then load them instead of compiling (or reading half-written ones)
    with FileLock(graphs_dir / f"compile-{chosen}.lock"):
        return OpenVinoRuntime(
            spec.model_id, model, graphs_dir, chosen, embed_threads, decode_threads, **options
        )


def make_factory(
    cache_dir: Path,
    precision: Precision | Literal["auto"] = "auto",
    embed_threads: int = 0,
    decode_threads: int = 0,
    *,
    background: bool = False,
) -> RuntimeFactory:
    """A ModelPool factory: OpenVINO on CPU where it works, else the torch
    runtime (logged once per load with the reason). background: when the model's graphs are
    not exported yet, serve on torch at once and export + compile on a background thread
    (`PreparingRuntime`) instead of making the first request wait."""

    def load(spec: ModelSpec, checkpoint: Path) -> Runtime:
        return load_runtime(spec, checkpoint, cache_dir, precision, embed_threads, decode_threads)

    def factory(spec: ModelSpec, checkpoint: Path, device: torch.device) -> Runtime:
        if device.type == "cpu":
            try:
                if background and not is_exported(spec, checkpoint, cache_dir):
                    probe(precision)  # unavailable backends fall back here, not later
                    exact = torch_runtime_factory(spec, checkpoint, device)
                    return PreparingRuntime(exact, lambda: load(spec, checkpoint), spec.model_id)
                return load(spec, checkpoint)
            except BackendUnavailable as exc:
                log.warning("fast runtime unavailable, using torch fp32: %s", exc)
        return torch_runtime_factory(spec, checkpoint, device)

    return factory
