"""The fast CPU runtime: SAM2's image encoder and mask decoder compiled by OpenVINO.

* embed: the image encoder (+ the decoder's high-res projections and no-memory embedding,
  exactly what `TorchRuntime.embed` computes) as one OpenVINO graph: f32, bf16 (on CPUs
  with native bf16: AVX512-BF16 / AMX) or int8 (NNCF, `runtime.quantize`), the fastest that
  keeps the stated mask tolerance on this machine (`runtime.choice`, measured once per
  runtime cache) unless one is pinned. Features are stored as bfloat16 where the CPU
  computes bf16 or the encoder is int8 (8 MiB per 1024 px image instead of 16 MiB). The
  embed also runs the decoder's per-image preparation (`DecoderPrep`), so the first click
  on a new image costs what a later one does.
* decode: `FastMaskDecoder` (one batched call for all prompts, prompt-independent work
  done once per image and memoised: the last few embedded images, the last few clicked
  ones) compiled by OpenVINO; the prompt encoder, upscaling and mask-input refinement stay
  in torch (the latter through the torch runtime, exact).

Exported graphs are cached on disk under `cache_dir/<model_id>-<sha256[:16]>-ov<version>-v<N>`
(built once, lazily on first load or ahead of time with `build_cache`); the int8 encoder
(`encoder-int8-<recipe>.xml`), the measured choice (`choice-<bf16|f32>.json`) and OpenVINO's
compiled blobs live beside them. Fidelity vs the torch runtime and Meta's predictor is asserted in
tests (mask IoU).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from sam2serve.registry import ModelSpec
from sam2serve.runtime import choice as encoder_choice
from sam2serve.runtime.base import Decoded, Features, PromptBatch, Runtime
from sam2serve.runtime.fast_decoder import token_bias
from sam2serve.runtime.memory import pin_mmap_threshold
from sam2serve.runtime.openvino_export import (
    GRAPHS,
    BackendUnavailable,
    Precision,
    Requested,
    _openvino,
    build_cache,
    cache_key_dir,
    is_exported,
    probe,
)
from sam2serve.runtime.pool import RuntimeFactory, torch_runtime_factory
from sam2serve.runtime.preparing import PreparingRuntime
from sam2serve.runtime.quantize import (
    CHECK,
    build_int8_encoder,
    is_quantized,
    load_image,
    nncf_version,
    recipe_id,
)
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model

log = logging.getLogger(__name__)

# images whose per-image decoder work is kept (14 MiB each at 1024 px in bf16, 28 in f32):
PREP_MEMO = 4  # the last clicked ones
PREP_FRESH = 2  # the last embedded ones not clicked yet (their first click finds it ready)
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


def _bf16_io(ov: Any, graph: Any, name: str) -> Any:
    """Features and per-image decoder inputs cross graph borders as bf16 (no f32 copy)."""
    ppp = ov.preprocess.PrePostProcessor(graph)
    if name in ("prep", "decoder"):
        for i in range(3 if name == "prep" else 6):
            ppp.input(i).tensor().set_element_type(ov.Type.bf16)
    if name in ("encoder", "prep"):
        for i in range(len(graph.outputs)):
            ppp.output(i).tensor().set_element_type(ov.Type.bf16)
    return ppp.build()


def compile_graph(
    core: Any,
    path: Path,
    name: str,
    precision: Precision,
    threads: int = 0,
    decode_cache_capacity: int | None = None,
) -> _Compiled:
    """Compile graph `name` ("encoder" | "prep" | "decoder") read from `path`, computing in
    `precision`, as the runtime runs it (the measured choice times exactly this)."""
    ov = _openvino()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    if name == "decoder" and decode_cache_capacity is not None:
        config["CPU_RUNTIME_CACHE_CAPACITY"] = decode_cache_capacity
    if name != "encoder":
        # OpenVINO's fused attention kernels are slow for the decoder's few-token
        # attentions (plain matmuls win); the encoder's attention likes them
        config["SNIPPETS_MODE"] = "DISABLE"
    graph = core.read_model(path)
    if precision == "bf16":
        graph = _bf16_io(ov, graph, name)
    return _Compiled(core.compile_model(graph, "CPU", config))


def _core(graphs_dir: Path, precision: Precision) -> Any:
    """An OpenVINO core whose compiled blobs are cached beside the graphs."""
    core = _openvino().Core()
    core.set_property({"CACHE_DIR": str(graphs_dir / f"compiled-{precision}")})
    return core


def _encode(ov: Any, enc: _Compiled, x: np.ndarray) -> list[torch.Tensor]:
    """(1, 3, S, S) float32 -> image_embed, feat_s0, feat_s1 (torch copies)."""
    with enc.lock:
        enc.request.infer([x])
        return [_to_torch(ov, enc.request.get_output_tensor(i)) for i in range(3)]


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
        int8_encoder: Path | None = None,
        choice: dict[str, Any] | None = None,
        decode_cache_capacity: int | None = DECODE_CACHE_CAPACITY,
        bucket_shapes: bool = True,
    ) -> None:
        """precision: what every graph computes in. int8_encoder: an int8 encoder graph
        (`runtime.quantize`) to run instead of the float one; the other graphs and the
        quantized graph's float parts still compute in `precision`. choice: the measured
        choice's record, for /info. embed_threads / decode_threads: OpenVINO threads of the
        encoder / of the decoder graphs (0 = one per core). decode_cache_capacity: per-shape
        entries the CPU plugin keeps for the decoder (None = OpenVINO's default);
        bucket_shapes: run the decoder at padded shapes only (see DECODE_CHUNK); off, every
        prompt shape is its own."""
        self._ov = _openvino()
        self.model_id = model_id
        self.device = torch.device("cpu")
        self.inference: Precision = precision
        #: the producer's precision (Redis values name it; other runtimes refuse them):
        #: "bf16" / "f32", or "int8-bf16" / "int8-f32" for the int8 encoder
        self.precision = precision if int8_encoder is None else f"int8-{precision}"
        self.encoder_precision = precision if int8_encoder is None else "int8"
        self.choice = choice
        # the torch runtime gives transforms, upscale and the exact mask-input path
        self._torch = TorchRuntime(model_id, model, self.device)
        model.image_encoder = torch.nn.Identity()  # weights live in the compiled encoder
        # bf16 storage (half the bytes per cached image) wherever the features are not
        # exact fp32 anyway: bf16's rounding (~0.2 % rel. L2) is small beside the int8
        # encoder's own error (~1-2 %), and the decoder graphs upcast on their way in
        self._storage = (
            torch.bfloat16 if precision == "bf16" or int8_encoder is not None else torch.float32
        )
        core = _core(graphs_dir, precision)
        graphs = {}
        for name in GRAPHS:
            path = graphs_dir / f"{name}.xml"
            if name == "encoder" and int8_encoder is not None:
                path = int8_encoder
            threads = embed_threads if name == "encoder" else decode_threads
            graphs[name] = compile_graph(
                core, path, name, precision, threads, decode_cache_capacity
            )
        self._encoder, self._prep, self._decoder = (graphs[n] for n in GRAPHS)
        # per-image decoder inputs: `_fresh` holds the last embedded images' until their
        # first click moves them to `_memo` (the last clicked), so embeds never push an
        # image that is being clicked out of the memo
        self._memo: OrderedDict[int, tuple[weakref.ref, list[Any]]] = OrderedDict()
        self._fresh: OrderedDict[int, tuple[weakref.ref, list[Any]]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self.bucket_shapes = bucket_shapes

    @property
    def low_res_size(self) -> int:
        return self._torch.low_res_size

    def encode(self, rgb: np.ndarray) -> Features:
        """rgb: (H, W, 3) uint8 -> Features stored as bf16 (bf16 or int8) or f32; the
        encoder only (video frames: their masks come from the video model's decoder)."""
        x = self._torch.transforms(rgb)[None].numpy()
        outs = [t.to(self._storage) for t in _encode(self._ov, self._encoder, x)]
        return Features(
            image_embed=outs[0],
            high_res=(outs[1], outs[2]),
            orig_hw=(int(rgb.shape[0]), int(rgb.shape[1])),
        )

    def embed(self, rgb: np.ndarray) -> Features:
        """`encode`, then the decoder's per-image preparation for the image's first click."""
        features = self.encode(rgb)
        prepared = self._run_prep(features)
        with self._memo_lock:
            _remember(self._fresh, features, prepared, PREP_FRESH)
        return features

    def _prepared(self, features: Features) -> list[Any]:
        """The image's prompt-independent decoder inputs, memoised per Features object."""
        key = id(features.image_embed)
        with self._memo_lock:
            hit = self._memo.get(key)
            if hit is not None and hit[0]() is features.image_embed:
                self._memo.move_to_end(key)
                return hit[1]
            fresh = self._fresh.pop(key, None)
            if fresh is not None and fresh[0]() is features.image_embed:
                _remember(self._memo, features, fresh[1], PREP_MEMO)
                return fresh[1]
        # not embedded here (fetched from the shared tier, embedded before a switch from
        # the exact path) or pushed out of the memo: prepared now, once
        prepared = self._run_prep(features)
        with self._memo_lock:
            _remember(self._memo, features, prepared, PREP_MEMO)
        return prepared

    def _run_prep(self, features: Features) -> list[Any]:
        inputs = [features.image_embed, *features.high_res]
        prep = self._prep
        with prep.lock:
            if self.inference == "bf16":
                for i, t in enumerate(inputs):
                    prep.request.set_input_tensor(i, _bf16_tensor(self._ov, t))
                prep.request.infer()
            else:
                prep.request.infer([t.float().numpy() for t in inputs])
            # copies: the request reuses its output buffers on the next call
            return [self._copy(prep.request.get_output_tensor(i)) for i in range(6)]

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


def _remember(
    memo: OrderedDict[int, tuple[weakref.ref, list[Any]]],
    features: Features,
    prepared: list[Any],
    capacity: int,
) -> None:
    """Keep `prepared` for `features` (by identity) in an LRU of `capacity` images."""
    memo[id(features.image_embed)] = (weakref.ref(features.image_embed), prepared)
    memo.move_to_end(id(features.image_embed))
    while len(memo) > capacity:
        memo.popitem(last=False)


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
    precision: Requested = "auto",
    embed_threads: int = 0,
    decode_threads: int = 0,
    **options: Any,
) -> OpenVinoRuntime:
    """Probe, export once (cached on disk), quantize the encoder once ("auto", "int8"),
    choose the encoder by measurement once ("auto"), compile. Raises BackendUnavailable
    ("int8" without NNCF too). `options`: OpenVinoRuntime's keyword-only ones
    (decode_cache_capacity, bucket_shapes)."""
    inference = probe(precision)
    pin_mmap_threshold()
    graphs_dir = build_cache(spec, checkpoint, cache_dir)
    model = build_model(spec, checkpoint, torch.device("cpu"))
    exact = TorchRuntime(spec.model_id, model, torch.device("cpu"))
    int8: Path | None = None
    record: dict[str, Any] | None = None
    if precision in ("auto", "int8"):
        try:
            int8 = build_int8_encoder(
                graphs_dir, lambda rgb: exact.transforms(rgb)[None].numpy(), inference
            )
        except BackendUnavailable as exc:
            if precision == "int8":
                raise
            log.warning("int8 encoder unavailable, choosing among the float ones: %s", exc)
    if precision == "auto":
        record = _choose(graphs_dir, exact, inference, int8, embed_threads)
        chosen = record["chosen"]
        if chosen != "int8":
            int8 = None
            inference = chosen
    # one compile per cache dir at a time: the first writes OpenVINO's compiled blobs, the
    # others then load them instead of compiling (or reading half-written ones)
    with FileLock(graphs_dir / f"compile-{inference}.lock"):
        return OpenVinoRuntime(
            spec.model_id,
            model,
            graphs_dir,
            inference,
            embed_threads,
            decode_threads,
            int8_encoder=int8,
            choice=record,
            **options,
        )


def _choice_key(inference: Precision, int8: bool, embed_threads: int) -> dict[str, Any]:
    """What a recorded choice was measured over: candidates, int8 recipe, encoder threads."""
    candidates = ["f32", *(["bf16"] if inference == "bf16" else []), *(["int8"] if int8 else [])]
    return {
        "candidates": candidates,
        "int8_recipe": recipe_id(inference) if int8 else None,
        "embed_threads": embed_threads,
    }


def _choose(
    graphs_dir: Path, exact: TorchRuntime, inference: Precision, int8: Path | None, threads: int
) -> dict[str, Any]:
    """The measured choice for this kind of CPU, from the runtime cache or measured now."""
    ov = _openvino()
    key = _choice_key(inference, int8 is not None, threads)

    def candidate(name: str) -> Any:
        def make() -> encoder_choice.EncodeFn:
            hint: Precision = inference if name == "int8" else name  # type: ignore[assignment]
            path = int8 if name == "int8" and int8 is not None else graphs_dir / "encoder.xml"
            with FileLock(graphs_dir / f"compile-{hint}.lock"):
                enc = compile_graph(_core(graphs_dir, hint), path, "encoder", hint, threads)
            return lambda x: _encode(ov, enc, x)

        return make

    def run() -> dict[str, Any]:
        rgb = load_image(CHECK)
        x = exact.transforms(rgb)[None].numpy()
        record = encoder_choice.measure(
            {name: candidate(name) for name in key["candidates"]},
            x,
            (int(rgb.shape[0]), int(rgb.shape[1])),
            lambda features, batch: exact.decode(features, batch, True),
        )
        return {**record, "cpu": _cpu()}

    return encoder_choice.load_or_measure(
        encoder_choice.choice_path(graphs_dir, inference), key, run
    )


def _cpu() -> dict[str, Any]:
    """The CPU the choice was measured on (OpenVINO's name and capabilities)."""
    core = _openvino().Core()
    found: dict[str, Any] = {}
    for field, prop in (
        ("name", "FULL_DEVICE_NAME"),
        ("capabilities", "OPTIMIZATION_CAPABILITIES"),
    ):
        try:
            found[field] = core.get_property("CPU", prop)
        except Exception:  # an older plugin without the property: leave it out
            continue
    found["cores"] = os.cpu_count()
    return found


def is_prepared(
    spec: ModelSpec,
    checkpoint: Path,
    cache_dir: Path,
    precision: Requested = "auto",
    embed_threads: int = 0,
) -> bool:
    """Whether `load_runtime(..., precision)` finds everything it needs on disk (graphs,
    int8 encoder, measured choice): a load then compiles or reads compiled blobs only."""
    if not is_exported(spec, checkpoint, cache_dir):
        return False
    graphs_dir = cache_key_dir(spec, checkpoint, cache_dir)
    if precision not in ("auto", "int8"):
        return True
    inference = probe(precision)  # the int8 recipe depends on it
    quantized = is_quantized(graphs_dir, inference)
    if nncf_version() is not None and not quantized:
        return False
    if precision != "auto":
        return True
    path = encoder_choice.choice_path(graphs_dir, inference)
    key = _choice_key(inference, quantized, embed_threads)
    return encoder_choice.read_choice(path, key) is not None


def prepare_for_weights_dir(
    spec: ModelSpec,
    weights_dir: Path,
    cache_dir: Path,
    precision: Requested = "auto",
    *,
    allow_download: bool,
) -> Path:
    """For the CLI: make sure the checkpoint is there (downloading if allowed), then do the
    one-time preparation (export, int8 encoder, measured choice) unless already done.
    Returns the graphs' directory."""
    from sam2serve.runtime.weights import ensure_checkpoint

    checkpoint = ensure_checkpoint(spec, weights_dir, allow_download=allow_download)
    load_runtime(spec, checkpoint, cache_dir, precision)
    return cache_key_dir(spec, checkpoint, cache_dir)


def make_factory(
    cache_dir: Path,
    precision: Requested = "auto",
    embed_threads: int = 0,
    decode_threads: int = 0,
    *,
    background: bool = False,
) -> RuntimeFactory:
    """A ModelPool factory: OpenVINO on CPU where it works, else the torch
    runtime (logged once per load with the reason). background: when the model's one-time
    preparation (export, int8 encoder, measured choice) is not done yet, serve on torch at
    once and prepare + compile on a background thread (`PreparingRuntime`) instead of
    making the first request wait."""

    def load(spec: ModelSpec, checkpoint: Path) -> Runtime:
        return load_runtime(spec, checkpoint, cache_dir, precision, embed_threads, decode_threads)

    def factory(spec: ModelSpec, checkpoint: Path, device: torch.device) -> Runtime:
        if device.type == "cpu":
            try:
                prepared = is_prepared(spec, checkpoint, cache_dir, precision, embed_threads)
                if background and not prepared:
                    probe(precision)  # unavailable backends fall back here, not later
                    if precision == "int8" and nncf_version() is None:
                        raise BackendUnavailable("nncf is not installed: no int8 encoder")
                    exact = torch_runtime_factory(spec, checkpoint, device)
                    return PreparingRuntime(exact, lambda: load(spec, checkpoint), spec.model_id)
                return load(spec, checkpoint)
            except BackendUnavailable as exc:
                log.warning("fast runtime unavailable, using torch fp32: %s", exc)
        return torch_runtime_factory(spec, checkpoint, device)

    return factory
