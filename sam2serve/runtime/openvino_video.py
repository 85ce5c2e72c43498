"""The video tracker's memory attention and memory encoder as OpenVINO graphs (the fast path).

A propagated frame runs the image encoder, memory attention (the current frame's features
cross-attend to up to 7 earlier frames' memories and up to 16 object pointers), the mask
decoder and the memory encoder. `SAM2SERVE_VIDEO_PRECISION=fast` takes the image encoder from
the image runtime (OpenVINO) and, from this module, memory attention and the memory encoder,
exported once per (model, exact weights, OpenVINO version) into the runtime cache beside the
image graphs (`<model_id>-<sha256[:16]>-ov<version>-video-v<N>`) and compiled at the image
runtime's precision: bf16 where the CPU has it natively, f32 otherwise.

Memory attention's memory grows with the frames and objects a frame attends to, so its
memory inputs have dynamic lengths (no padding): spatial memories (F x HW tokens) and object
pointer tokens (P) come in as two inputs, which is exactly upstream's concatenation with
`num_obj_ptr_tokens=P`. The graph is upstream's math with the rotary encoding written in
real arithmetic (complex numbers do not export) and one exact rearrangement: the
cross-attention's values are projected after the attention instead of before, since
``softmax(S) (M Wv^T + bv) == (softmax(S) M) Wv^T + bv`` (rows of softmax(S) sum to 1),
which attends over the 64-dim memories instead of 256-dim values (~25% faster at 7 memory
frames in bf16). tests/unit/test_fast_video.py checks both graphs against the upstream
modules; the tolerance against Meta's `SAM2VideoPredictor` is tested in
tests/integration/test_video_fidelity.py.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as attend

from sam2serve.registry import ModelSpec
from sam2serve.runtime.openvino_export import (
    BackendUnavailable,
    Precision,
    _openvino,
    build_once,
    cache_key_dir,
    probe,
)
from sam2serve.runtime.video_tracker import build_video_model

log = logging.getLogger(__name__)

VIDEO_FORMAT = 1  # bump when the exported video graphs change
VIDEO_GRAPHS = ("memory_attention", "memory_encoder")


# -- graphs (exported) -------------------------------------------------------------------


class MemoryAttentionGraph(nn.Module):
    """Upstream `MemoryAttention.forward` for one object, memories split in two inputs.

    curr, curr_pos: (HW, 1, C) the frame's features and their position encoding;
    memory, memory_pos: (F * HW, 1, Cm) spatial memories of F frames (rotary-encoded keys);
    ptr, ptr_pos: (P, 1, Cm) object pointer tokens (keys without rotary encoding)
    -> (HW, 1, C), as upstream with memory = cat(memory, ptr), num_obj_ptr_tokens = P.
    """

    def __init__(self, attention: nn.Module, hw: int) -> None:
        super().__init__()
        self.attention = attention
        self.hw = hw
        side = round(hw**0.5)
        freqs = attention.layers[0].self_attn.compute_cis(end_x=side, end_y=side)  # (HW, d/2)
        self.register_buffer("cos", freqs.real.float().contiguous(), persistent=False)
        self.register_buffer("sin", freqs.imag.float().contiguous(), persistent=False)

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        """(1, h, N * HW, d): rotate each (even, odd) pair by its grid position's angle,
        upstream's `apply_rotary_enc` (complex multiply; keys repeat the grid N times)."""
        b, h, n, d = x.shape
        pairs = x.float().reshape(b, h, -1, self.hw, d // 2, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
        cos, sin = self.cos, self.sin
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).reshape(b, h, n, d)

    @staticmethod
    def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    @staticmethod
    def _merge(x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def _self_attention(self, attn: nn.Module, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Upstream `RoPEAttention(q, k=q, v)`."""
        h = attn.num_heads
        qh = self._rope(self._heads(attn.q_proj(q), h))
        kh = self._rope(self._heads(attn.k_proj(q), h))
        vh = self._heads(attn.v_proj(v), h)
        return attn.out_proj(self._merge(attend(qh, kh, vh)))

    def _cross_attention(
        self,
        attn: nn.Module,
        q: torch.Tensor,
        keys: torch.Tensor,
        memory: torch.Tensor,
        ptr_keys: torch.Tensor,
        ptr: torch.Tensor,
    ) -> torch.Tensor:
        """Upstream `RoPEAttention(q, k=cat(keys, ptr_keys), v=cat(memory, ptr),
        num_k_exclude_rope=P)`, values projected after the attention (exact, see above)."""
        h = attn.num_heads
        qh = self._rope(self._heads(attn.q_proj(q), h))
        kh = torch.cat(
            [self._rope(self._heads(attn.k_proj(keys), h)), self._heads(attn.k_proj(ptr_keys), h)],
            dim=2,
        )
        values = torch.cat([memory, ptr], dim=1).unsqueeze(1)  # (1, 1, Nk, Cm), every head
        mixed = attend(qh, kh, values.expand(-1, h, -1, -1))
        weight = attn.v_proj.weight.reshape(h, -1, values.shape[-1])  # (h, d, Cm)
        out = mixed @ weight.transpose(1, 2) + attn.v_proj.bias.reshape(h, 1, -1)
        return attn.out_proj(self._merge(out))

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        ptr: torch.Tensor,
        ptr_pos: torch.Tensor,
    ) -> torch.Tensor:
        a = self.attention
        out = curr + 0.1 * curr_pos if a.pos_enc_at_input else curr
        out, curr_pos = out.transpose(0, 1), curr_pos.transpose(0, 1)
        memory, memory_pos = memory.transpose(0, 1), memory_pos.transpose(0, 1)
        ptr, ptr_pos = ptr.transpose(0, 1), ptr_pos.transpose(0, 1)
        for layer in a.layers:
            t = layer.norm1(out)
            q = t + curr_pos if layer.pos_enc_at_attn else t
            out = out + self._self_attention(layer.self_attn, q, t)
            t = layer.norm2(out)
            q = t + curr_pos if layer.pos_enc_at_cross_attn_queries else t
            with_pos = layer.pos_enc_at_cross_attn_keys
            keys = memory + memory_pos if with_pos else memory
            ptr_keys = ptr + ptr_pos if with_pos else ptr
            cross = layer.cross_attn_image
            out = out + self._cross_attention(cross, q, keys, memory, ptr_keys, ptr)
            t = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t)))
        return a.norm(out).transpose(0, 1)


class MemoryEncoderGraph(nn.Module):
    """Upstream `MemoryEncoder.forward(pix_feat, masks, skip_mask_sigmoid=True)` without
    the position encoding (it depends on the shape only; computed once in torch).

    pix_feat: (B, C, h, w) the frame's features; masks: (B, 1, S, S) mask probabilities,
    already scaled as upstream's `_encode_new_memory` does -> (B, Cm, h, w) memory features.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = enc.pix_feat_proj(pix_feat) + enc.mask_downsampler(masks)
        return enc.out_proj(enc.fuser(x))


def _video_graphs(spec: ModelSpec, checkpoint: Path) -> dict[str, Any]:
    ov = _openvino()
    model = build_video_model(spec, checkpoint, torch.device("cpu"))
    size = int(model.image_size)
    side = size // 16  # the lowest feature level: memories live there
    hw = side * side
    c, cm = int(model.hidden_dim), int(model.mem_dim)
    attention = MemoryAttentionGraph(model.memory_attention, hw).eval()
    encoder = MemoryEncoderGraph(model.memory_encoder).eval()
    with torch.no_grad():
        curr = (torch.zeros(hw, 1, c), torch.zeros(hw, 1, c))
        memory = (torch.zeros(2 * hw, 1, cm), torch.zeros(2 * hw, 1, cm))
        ptr = (torch.zeros(8, 1, cm), torch.zeros(8, 1, cm))
        pix, masks = torch.zeros(1, c, side, side), torch.zeros(1, 1, size, size)
        return {
            "memory_attention": ov.convert_model(
                attention,
                example_input=(*curr, *memory, *ptr),
                input=[
                    ("curr", [hw, 1, c]),
                    ("curr_pos", [hw, 1, c]),
                    ("memory", [-1, 1, cm]),
                    ("memory_pos", [-1, 1, cm]),
                    ("ptr", [-1, 1, cm]),
                    ("ptr_pos", [-1, 1, cm]),
                ],
            ),
            "memory_encoder": ov.convert_model(
                encoder,
                example_input=(pix, masks),
                input=[("pix_feat", [-1, c, side, side]), ("masks", [-1, 1, size, size])],
            ),
        }


def build_video_cache(spec: ModelSpec, checkpoint: Path, cache_dir: Path) -> Path:
    """Export the video graphs for `checkpoint` once (see `openvino_export.build_once`)."""
    target = cache_key_dir(spec, checkpoint, cache_dir, kind="video", version=VIDEO_FORMAT)
    return build_once(
        target, lambda: _video_graphs(spec, checkpoint), spec, checkpoint, VIDEO_FORMAT
    )


# -- compiled graphs in the model ----------------------------------------------------------


class _Graph:
    """One compiled graph with one infer request; calls are serialised by a lock."""

    def __init__(self, compiled: Any) -> None:
        self.request = compiled.create_infer_request()
        self.lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in inputs]
        with self.lock:
            self.request.infer(arrays)
            return torch.from_numpy(np.array(self.request.get_output_tensor(0).data, copy=True))


class OvMemoryAttention(nn.Module):
    """Drop-in for upstream `MemoryAttention` (same call), running `MemoryAttentionGraph`.

    Calls the graph does not cover (batch > 1, memories that are not whole frames) go to
    upstream's module, `fallback`. Upstream runs one object per call, so that never happens
    in propagation; it is there so a different caller stays correct.
    """

    def __init__(self, graph: _Graph, fallback: nn.Module, hw: int) -> None:
        super().__init__()
        self.graph = graph
        self.fallback = fallback
        self.hw = hw
        self.fallbacks = 0

    def forward(
        self,
        curr: torch.Tensor | list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: torch.Tensor | list[torch.Tensor] | None = None,
        memory_pos: torch.Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        if isinstance(curr, list):
            assert isinstance(curr_pos, list) and len(curr) == len(curr_pos) == 1
            curr, curr_pos = curr[0], curr_pos[0]
        assert curr_pos is not None and memory_pos is not None
        spatial = memory.shape[0] - num_obj_ptr_tokens
        one_object = curr.shape[1] == 1 and curr.shape[0] == self.hw
        covered = one_object and spatial > 0 and spatial % self.hw == 0
        if not covered:
            self.fallbacks += 1
            return self.fallback(
                curr=curr,
                memory=memory.float(),
                curr_pos=curr_pos,
                memory_pos=memory_pos.float(),
                num_obj_ptr_tokens=num_obj_ptr_tokens,
            )
        out = self.graph(
            curr,
            curr_pos,
            memory[:spatial],
            memory_pos[:spatial],
            memory[spatial:],
            memory_pos[spatial:],
        )
        return out.to(curr.device)


class OvMemoryEncoder(nn.Module):
    """Drop-in for upstream `MemoryEncoder` (same call), running `MemoryEncoderGraph`."""

    def __init__(self, graph: _Graph, upstream: nn.Module) -> None:
        super().__init__()
        self.graph = graph
        self.position_encoding = upstream.position_encoding
        self.out_proj = upstream.out_proj  # upstream reads out_proj.weight for mem_dim

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, Any]:
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        x = self.graph(pix_feat, masks).to(pix_feat.device)
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}


class VideoGraphs:
    """One model's compiled video graphs; `install(model)` puts them into a video model."""

    def __init__(self, graphs_dir: Path, precision: Precision, threads: int = 0) -> None:
        ov = _openvino()
        self.precision = precision
        core = ov.Core()
        core.set_property({"CACHE_DIR": str(graphs_dir / f"compiled-{precision}")})
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            # the fused attention kernel of OpenVINO's snippets runs memory attention's
            # 4096 x (F * 4096) attention slower than plain matmul + softmax on CPU
            "SNIPPETS_MODE": "DISABLE",
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self._graphs = {
            name: _Graph(core.compile_model(str(graphs_dir / f"{name}.xml"), "CPU", config))
            for name in VIDEO_GRAPHS
        }

    def install(self, model: nn.Module) -> None:
        """Replace `model`'s memory attention and memory encoder by the compiled graphs."""
        side = int(model.image_size) // 16
        model.memory_attention = OvMemoryAttention(
            self._graphs["memory_attention"], model.memory_attention, side * side
        )
        model.memory_encoder = OvMemoryEncoder(self._graphs["memory_encoder"], model.memory_encoder)

    def describe(self) -> dict[str, str]:
        return {name: f"openvino-{self.precision}" for name in VIDEO_GRAPHS}


def load_video_graphs(
    spec: ModelSpec,
    checkpoint: Path,
    cache_dir: Path,
    precision: Precision | str = "auto",
    threads: int = 0,
) -> VideoGraphs:
    """Probe, export once (cached on disk), compile. Raises BackendUnavailable."""
    chosen = probe(precision if precision in ("bf16", "f32") else "auto")  # type: ignore[arg-type]
    graphs_dir = build_video_cache(spec, checkpoint, cache_dir)
    with FileLock(graphs_dir / f"compile-{chosen}.lock"):
        return VideoGraphs(graphs_dir, chosen, threads)


__all__ = ["BackendUnavailable", "VideoGraphs", "build_video_cache", "load_video_graphs"]
