"""SAM2's mask decoder rewritten for batched clicks on one cached image.

Same weights and the same math as `MaskDecoder.predict_masks` (with the no-mask dense
embedding), rearranged so that N prompts on one image cost far less than N calls:

* Prompt-independent work is done once per image (`DecoderPrep`): the image tokens plus
  the no-mask embedding, and the first layer's three image-side projections (its image
  keys are the same for every prompt).
* In every other cross attention the 4096 image tokens are never projected. For
  token->image attention the key projection is folded into the (few) queries and the value
  projection is applied after the attention-weighted sum (softmax rows sum to 1, so
  `P (X Wv + b) = (P X) Wv + b`). For image->token attention the query projection is folded
  into the keys and the output projection into the values. This halves the decoder's
  FLOPs for prompts of up to ~9 points; results equal upstream within float rounding.

Shapes: D = 256 channels, S = 64x64 = 4096 image tokens, T = output tokens + prompt
tokens, H heads of size d. Modules are plain torch, so they run eagerly or export to
OpenVINO / ONNX unchanged. Only the fast runtime imports this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _per_head_weight(linear: nn.Linear, num_heads: int) -> Tensor:
    """Linear(in=D, out=H*d) weight (H*d, D) -> (H, d, D)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(num_heads, out_dim // num_heads, in_dim)


class DecoderPrep(nn.Module):
    """Per-image work: image_embed (1, D, 64, 64) -> src (1, S, D), and layer 1's shared
    image-side projections k1, v1 (token->image keys/values) and q1 (image->token queries),
    each (1, S, D/2)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        prompt_encoder = model.sam_prompt_encoder
        layer = model.sam_mask_decoder.transformer.layers[0]
        with torch.no_grad():
            pe = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
        self.register_buffer("pe", pe, persistent=False)
        self.no_mask = nn.Parameter(prompt_encoder.no_mask_embed.weight.detach().reshape(1, 1, -1))
        self.t2i = layer.cross_attn_token_to_image
        self.i2t = layer.cross_attn_image_to_token

    def forward(self, image_embed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        src = image_embed.flatten(2).transpose(1, 2) + self.no_mask
        src_pe = src + self.pe
        return src, self.t2i.k_proj(src_pe), self.t2i.v_proj(src), self.i2t.q_proj(src_pe)


class FastMaskDecoder(nn.Module):
    """(prep outputs, high-res features, sparse prompt embeddings (N, K, D)) ->
    all mask logits (N, M, 4*64, 4*64) and IoU predictions (N, M), M = 1 + multimask count,
    exactly what `MaskDecoder.predict_masks` returns (before multimask selection)."""

    def __init__(self, model: nn.Module, prep: DecoderPrep) -> None:
        super().__init__()
        md = model.sam_mask_decoder
        transformer = md.transformer
        self.md = md
        self.layers = transformer.layers
        self.final = transformer.final_attn_token_to_image
        self.norm_final = transformer.norm_final_attn
        self.num_heads = int(transformer.num_heads)
        self.prep = prep  # shares pe (buffer) with the prep module
        self.first_mask = 1 if md.pred_obj_scores else 0
        tokens = [md.iou_token.weight, md.mask_tokens.weight]
        if md.pred_obj_scores:
            tokens.insert(0, md.obj_score_token.weight)
        self.output_tokens = nn.Parameter(torch.cat(tokens, dim=0).detach())

    # -- attention variants ------------------------------------------------------------

    def _token_to_image(self, attn: nn.Module, q_in: Tensor, keys: Tensor, pe: Tensor) -> Tensor:
        """Queries (N, T, D) attend to image tokens keys (N, S, D) (+pe (1, S, D) on the
        key side) without projecting the S keys/values: (N, T, D)."""
        h = self.num_heads
        q = _heads(attn.q_proj(q_in), h)  # (N, H, T, d)
        d = q.shape[-1]
        wk = _per_head_weight(attn.k_proj, h)  # (H, d, D)
        q_full = torch.matmul(q, wk) * (1.0 / math.sqrt(d))  # (N, H, T, D); k bias cancels
        n, _, t, c = q_full.shape
        scores = torch.matmul(q_full.reshape(n, h * t, c), (keys + pe).transpose(1, 2))
        probs = torch.softmax(scores.reshape(n, h, t, -1), dim=-1)  # (N, H, T, S)
        pooled = torch.matmul(probs.reshape(n, h * t, -1), keys).reshape(n, h, t, c)
        wv = _per_head_weight(attn.v_proj, h)  # (H, d, D)
        v = torch.matmul(pooled, wv.transpose(1, 2)) + attn.v_proj.bias.reshape(1, h, 1, d)
        return attn.out_proj(_merge(v))

    def _image_to_token(
        self, attn: nn.Module, q_img: Tensor | None, keys_pe: Tensor | None, tokens_k: Tensor,
        tokens_v: Tensor,
    ) -> Tensor:
        """Image tokens attend to the T prompt tokens; returns attn output (N, S, D).

        Either `q_img` (1, S, H*d) already-projected shared queries (layer 1), or `keys_pe`
        (N, S, D) raw image tokens + pe whose query projection is folded into the keys.
        """
        h = self.num_heads
        k = _heads(attn.k_proj(tokens_k), h)  # (N, H, T, d)
        v = _heads(attn.v_proj(tokens_v), h)  # (N, H, T, d)
        n, _, t, d = k.shape
        scale = 1.0 / math.sqrt(d)
        if q_img is not None:
            scores = torch.matmul(_heads(q_img, h), k.transpose(2, 3)) * scale  # (N,H,S,T)
        else:
            assert keys_pe is not None
            wq = _per_head_weight(attn.q_proj, h)  # (H, d, D)
            folded = torch.matmul(k, wq) * scale  # (N, H, T, D)
            bias = (k * attn.q_proj.bias.reshape(1, h, 1, d)).sum(-1) * scale  # (N, H, T)
            scores = torch.matmul(keys_pe, folded.reshape(n, h * t, -1).transpose(1, 2))
            scores = scores.reshape(n, -1, h, t).transpose(1, 2) + bias[:, :, None, :]
        probs = torch.softmax(scores, dim=-1)  # (N, H, S, T)
        wo = attn.out_proj.weight.reshape(attn.out_proj.weight.shape[0], h, d)  # (D, H, d)
        values = torch.matmul(v, wo.permute(1, 2, 0))  # (N, H, T, D)
        s = probs.shape[2]
        flat = probs.transpose(1, 2).reshape(n, s, h * t)
        return torch.matmul(flat, values.reshape(n, h * t, -1)) + attn.out_proj.bias

    # -- forward -----------------------------------------------------------------------

    def forward(
        self, src: Tensor, k1: Tensor, v1: Tensor, q1: Tensor, feat_s0: Tensor,
        feat_s1: Tensor, sparse: Tensor,
    ) -> tuple[Tensor, Tensor]:
        n = sparse.shape[0]
        pe = self.prep.pe
        out_tokens = self.output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)  # (N, T, D), also the query pe
        first = self.layers[0]

        # layer 1: image keys are shared, so k1/v1/q1 come precomputed
        queries = first.norm1(first.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = first.cross_attn_token_to_image
        h = self.num_heads
        q = _heads(t2i.q_proj(queries + tokens), h)  # (N, H, T, d)
        t = q.shape[2]
        q_all = q.transpose(0, 1).reshape(1, h, n * t, -1)  # every prompt's queries, one batch
        attn = F.scaled_dot_product_attention(q_all, _heads(k1, h), _heads(v1, h))
        attn = attn.reshape(h, n, t, -1).transpose(0, 1)  # (N, H, T, d)
        queries = first.norm2(queries + t2i.out_proj(_merge(attn)))
        queries = first.norm3(queries + first.mlp(queries))
        i2t = first.cross_attn_image_to_token
        keys = first.norm4(src + self._image_to_token(i2t, q1, None, queries + tokens, queries))

        # layer 2 (and any further layers): per-prompt keys, projections folded
        for layer in self.layers[1:]:
            q_in = queries + tokens
            queries = layer.norm1(queries + layer.self_attn(q=q_in, k=q_in, v=queries))
            attn_out = self._token_to_image(
                layer.cross_attn_token_to_image, queries + tokens, keys, pe
            )
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            i2t_out = self._image_to_token(
                layer.cross_attn_image_to_token, None, keys + pe, queries + tokens, queries
            )
            keys = layer.norm4(keys + i2t_out)
        queries = self.norm_final(queries + self._token_to_image(self.final, queries + tokens,
                                                                 keys, pe))
        return self._masks(queries, keys, feat_s0, feat_s1)

    def _masks(self, hs: Tensor, keys: Tensor, feat_s0: Tensor, feat_s1: Tensor) -> tuple[
        Tensor, Tensor
    ]:
        md = self.md
        n, s, c = keys.shape
        side = int(math.isqrt(s))
        src = keys.transpose(1, 2).reshape(n, c, side, side)
        dc1, ln1, act1, dc2, act2 = md.output_upscaling
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)  # (N, C', 4*side, 4*side)
        first = self.first_mask
        mask_tokens = hs[:, first + 1 : first + 1 + md.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )  # (N, M, C')
        b, ch, hh, ww = up.shape
        masks = torch.matmul(hyper, up.reshape(b, ch, hh * ww)).reshape(b, -1, hh, ww)
        iou = md.iou_prediction_head(hs[:, first])
        return masks, iou
