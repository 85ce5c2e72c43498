"""SAM 3's concept heads (text encoder, fusion encoder, decoder, segmentation head) in bf16 on
a CPU with native bf16, attention excepted.

Where a phrase's time goes on the real architecture (docs/benchmarks.md, "SAM 3 phrase: where
the time goes"): the fusion encoder's self-attention over the 72 x 72 image tokens (~30 %),
the 200-query decoder (~20 %, mostly small ops), the pixel decoder's 3x3 convolutions at
144² and 288² (~12 %), the text encoder (~14 %), the encoder's FFN (~8 %).

Why plain bf16 autocast of the heads was slower than fp32 (1.24x against 1.01x Meta's): torch's
CPU flash-attention kernel is slower in bf16 than in fp32 at these shapes (8 heads x 5184
tokens x 32 dims: 0.91 s against 0.63 s per call, measured on the Zen 4 box), and the encoder
calls it 6 times per phrase. Convolutions and linear layers do gain (the 288² 3x3 conv 2.5 s
-> 0.8-1.0 s, the FFN's linears 1.7x). So here autocast runs everything but attention:
every `nn.MultiheadAttention` of the model runs with autocast off (fp32 in, fp32 out) while
`bf16_heads()` is active in this thread, and the rest as autocast decides. Inside those
modules, the long self-attention (the fusion encoder's 5184 image tokens) goes to the bf16
kernel `bf16_heads` is given (`bf16_attention`: OpenVINO's, ~1.7x torch's fp32 at that shape);
masked and short attention stays fp32 torch.

The hooks are installed once per model and do nothing outside `bf16_heads()` (a context
variable), so the exact runtime sharing the same modules stays exact, also from another thread.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import torch

from sam2serve.runtime import sam3_encoder
from sam2serve.runtime.bf16_attention import Bf16Attention, routed

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("sam3_bf16_heads", default=False)
#: The bf16 attention kernel the hooked attention sends its long self-attention to, if any.
_KERNEL: contextvars.ContextVar[Bf16Attention | None] = contextvars.ContextVar(
    "sam3_attention_kernel", default=None
)
_HOOKED = "_sam2serve_fp32_attention"
_BF16_BYTES = torch.finfo(torch.bfloat16).bits // 8
_FP32_BYTES = torch.finfo(torch.float32).bits // 8
_stacks = threading.local()


def _stack() -> list[contextlib.ExitStack]:
    if not hasattr(_stacks, "items"):
        _stacks.items = []
    return _stacks.items


def _attention_pre(module: torch.nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
    if not _ACTIVE.get():
        return None
    scope = contextlib.ExitStack()
    scope.enter_context(torch.autocast("cpu", enabled=False))
    scope.enter_context(routed(_KERNEL.get()))
    _stack().append(scope)
    # inputs may come straight out of a bf16 op (e.g. a linear): attention takes fp32 (the
    # bf16 kernel, where it takes a call, converts on its way in)
    up = [a.float() if torch.is_tensor(a) and a.dtype == torch.bfloat16 else a for a in args]
    kw = {
        k: v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16 else v
        for k, v in kwargs.items()
    }
    return tuple(up), kw


def _attention_post(module: torch.nn.Module, args: Any, kwargs: Any, output: Any) -> None:
    if _ACTIVE.get():
        _stack().pop().close()


def install_fp32_attention(model: torch.nn.Module) -> None:
    """Hook every `nn.MultiheadAttention` of `model` (once): inside `bf16_heads()` it runs with
    autocast off; elsewhere the hooks return at once and change nothing."""
    if getattr(model, _HOOKED, False):
        return
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.register_forward_pre_hook(_attention_pre, with_kwargs=True)
            module.register_forward_hook(_attention_post, with_kwargs=True, always_call=True)
    setattr(model, _HOOKED, True)


@contextlib.contextmanager
def bf16_heads(device: torch.device, attention: Bf16Attention | None = None) -> Iterator[None]:
    """bf16 autocast for this thread's SAM 3 calls, attention kept out of autocast (models
    hooked by `install_fp32_attention`): fp32, except long self-attention, which goes to
    `attention` (bf16 on OpenVINO's kernel) when one is given."""
    token, kernel = _ACTIVE.set(True), _KERNEL.set(attention)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        _KERNEL.reset(kernel)
        _ACTIVE.reset(token)


def ground_then_segment_later(
    model: torch.nn.Module,
    backbone_out: dict,
    find_input: Any,
    geometric_prompt: Any,
    first: torch.Tensor | None = None,
    bf16: bool = True,
) -> tuple[dict, SegmentLater]:
    """Meta's `Sam3Image.forward_grounding` (inference) up to the decoder: scores, boxes,
    presence; the segmentation head comes back as a `SegmentLater`, run for the queries the
    caller keeps. Meta runs the head for all 200 queries in every call, though its processor
    returns only those above the threshold (often none: an absent concept pays the ~1/6 of
    a phrase that the pixel decoder costs for nothing). The encoder starts from the image's
    `first` self-attention when given (`sam3_encoder.run_encoder`). bf16: the head runs as
    `bf16_heads` runs it (False: fp32, for a CPU without native bf16)."""
    prompt, prompt_mask, backbone_out = model._encode_prompt(
        backbone_out, find_input, geometric_prompt
    )
    backbone_out, encoder_out = sam3_encoder.run_encoder(
        model, backbone_out, find_input, prompt, prompt_mask, first
    )
    memory = encoder_out["encoder_hidden_states"]
    out, hs = model._run_decoder(
        memory=memory,
        pos_embed=encoder_out["pos_embed"],
        src_mask=encoder_out["padding_mask"],
        out={"encoder_hidden_states": memory},
        prompt=prompt,
        prompt_mask=prompt_mask,
        encoder_out=encoder_out,
    )
    later = SegmentLater(
        head=model.segmentation_head,
        fpn=list(backbone_out["backbone_fpn"]),
        image_ids=find_input.img_ids,
        memory=memory,
        prompt=prompt,
        prompt_mask=prompt_mask,
        queries=hs[-1].clone(),  # a view would keep every decoder layer's output alive
        device=memory.device,
        bf16=bf16,
    )
    return out, later


def storage_nbytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the storages `tensors` keep alive (a view keeps all of its base), each once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


class SegmentLater:
    """`UniversalSegmentationHead.forward` for chosen queries: the pixel decoder and the
    instance projection once (on first use, then kept: (1, 256, 288, 288), 42 MB in bf16,
    85 MB in fp32), the mask einsum per call for the queries asked. Skips what the processor
    never reads (the semantic head, the head's own presence logit). Same modules, in bf16 as
    `bf16_heads` runs them, or in fp32 (`bf16=False`).

    What it keeps alive (real config): the image's `fpn` (the features' own tensors: the
    runtime's device is where the store keeps them, so nothing is copied), the fusion
    encoder's `memory` (5184, 1, 256), the prompt (L, 1, 256), the decoder's queries
    (1, 200, 256), and after first use the pixel embedding (see `nbytes`)."""

    def __init__(
        self,
        *,
        head: torch.nn.Module,
        fpn: list[torch.Tensor],
        image_ids: torch.Tensor,
        memory: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        queries: torch.Tensor,
        device: torch.device,
        bf16: bool = True,
    ) -> None:
        self.head, self.fpn, self.image_ids = head, fpn, image_ids
        self.memory, self.prompt, self.prompt_mask = memory, prompt, prompt_mask
        self.queries = queries  # (1, Q, D): the last decoder layer's output
        self.device = device
        self.bf16 = bf16
        self._embeds: torch.Tensor | None = None
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held beyond the image's features (`fpn` is theirs), the pixel embedding
        counted from the start: (1, D, 4s, 4s) bf16 or fp32, kept after first use, so a cache that
        charges this never grows past its budget when masks are asked later."""
        own = [self.memory, self.prompt, self.prompt_mask, self.queries, self.image_ids]
        if self._embeds is not None:
            return storage_nbytes([*own, self._embeds])
        held = storage_nbytes(own)
        channels = int(self.head.instance_seg_head.out_channels)
        height, width = self.fpn[0].shape[-2:]
        itemsize = _BF16_BYTES if self.bf16 else _FP32_BYTES
        return held + channels * int(height) * int(width) * itemsize

    def _precision(self) -> contextlib.AbstractContextManager[None]:
        return bf16_heads(self.device) if self.bf16 else contextlib.nullcontext()

    @torch.inference_mode()
    def _instance_embeds(self) -> torch.Tensor:
        from sam2serve.runtime.sam3_device import on_device

        head = self.head
        with on_device(self.device), self._precision():
            memory = self.memory
            if head.cross_attend_prompt is not None:
                attended = head.cross_attend_prompt(
                    query=head.cross_attn_norm(memory),
                    key=self.prompt,
                    value=self.prompt,
                    key_padding_mask=self.prompt_mask,
                )[0]
                memory = attended + memory
            pixels = head._embed_pixels(
                backbone_feats=self.fpn, image_ids=self.image_ids, encoder_hidden_states=memory
            )
            return head.instance_seg_head(pixels)

    @torch.inference_mode()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """(K,) int64 query indices -> (K, h, w) float32 low-res mask logits."""
        with self._lock:
            if self._embeds is None:
                self._embeds = self._instance_embeds()
        with self._precision():
            masks = self.head.mask_predictor(self.queries[:, idx.to(self.device)], self._embeds)
        return masks[0].float()
