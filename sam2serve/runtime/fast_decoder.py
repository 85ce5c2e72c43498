"""SAM2's mask decoder rearranged for batched clicks on one cached image.

Same weights and the same math as `MaskDecoder.predict_masks` with the no-mask dense
embedding (equal within float rounding; checked by tests), arranged so that N prompts on
one image cost far less than N upstream calls and so that graph compilers (OpenVINO)
see only large matmuls and per-row ops, never a transpose of a big tensor:

* Prompt-independent work runs once per image (`DecoderPrep`): image tokens + no-mask
  embedding, the first layer's image-side projections (its image keys are the same for
  every prompt), and the high-res skip features re-laid out for the upscaler.
* In the later cross attentions the 4096 image tokens are never projected: for
  token->image attention the key projection is folded into the few queries and the value
  projection applied after the attention-weighted sum (softmax rows sum to 1, so
  `P (X Wv + b) = (P X) Wv + b`); for image->token attention the query projection is
  folded into the keys and the output projection into the values. For prompts of up to
  ~9 points this halves the decoder's FLOPs.
* The two stride-2 transposed convolutions of the upscaler are per-pixel linear maps, so
  they run as matmuls on a "nested" pixel order (y, x, ky, kx, ky2, kx2); only the final
  (N, M, 256, 256) masks are put back in raster order.

Shapes: D = 256 channels, S = 64*64 image tokens, T = output tokens + prompt tokens,
H heads of size d, M = 4 masks. Only the fast runtime imports this module.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

# Additive attention bias of a padding token: exp(PAD_BIAS - max) is exactly 0 in float32
# and bfloat16, so padded tokens take no part and the real tokens' results are unchanged.
PAD_BIAS = -30000.0


def token_bias(n: int, k: int, real: int) -> Tensor:
    """(N, k) bias for prompts of `real` tokens padded to `k`: 0 real, PAD_BIAS padding."""
    bias = torch.zeros(n, k)
    bias[:, real:] = PAD_BIAS
    return bias


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H*d) -> (B, H, L, d)."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    """(B, H, L, d) -> (B, L, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _per_head(linear: nn.Linear, num_heads: int) -> Tensor:
    """Weight of Linear(D -> H*d), (H*d, D), as (H, d, D)."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(num_heads, out_dim // num_heads, in_dim)


def _deconv_as_linear(deconv: nn.ConvTranspose2d) -> tuple[Tensor, Tensor]:
    """ConvTranspose2d(C_in, C, k=2, s=2) -> Linear weight (4*C, C_in) and bias (4*C,),
    outputs ordered (ky, kx, c)."""
    w = deconv.weight.detach()  # (C_in, C, 2, 2)
    weight = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()
    bias = deconv.bias.detach().repeat(4)
    return weight, bias


def nest_s1(feat_s1: Tensor) -> Tensor:
    """(1, C, 2h, 2w) -> (1, h*w, 4*C): per token (ky, kx, c), the upscaler's order."""
    _, c, hh, ww = feat_s1.shape
    x = feat_s1.reshape(1, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(1, (hh // 2) * (ww // 2), 4 * c)


def nest_s0(feat_s0: Tensor) -> Tensor:
    """(1, C, 4h, 4w) -> (1, h*w*4, 4*C): per (y, x, ky, kx) pixel, (ky2, kx2, c)."""
    _, c, hh, ww = feat_s0.shape
    x = feat_s0.reshape(1, c, hh // 4, 2, 2, ww // 4, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    return x.reshape(1, (hh // 4) * (ww // 4) * 4, 4 * c)


class DecoderPrep(nn.Module):
    """Per-image work. image_embed (1, D, h, w), feat_s0 (1, C0, 4h, 4w), feat_s1
    (1, C1, 2h, 2w) -> src (1, S, D), k1 and v1 (1, H, S, d), q1 (1, S, H*d),
    s1 (1, S, 4*C1) and s0 (1, 4S, 4*C0) in the upscaler's nested pixel order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        prompt_encoder = model.sam_prompt_encoder
        transformer = model.sam_mask_decoder.transformer
        layer = transformer.layers[0]
        self.num_heads = int(transformer.num_heads)
        with torch.no_grad():
            pe = prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
        self.register_buffer("pe", pe, persistent=False)
        no_mask = prompt_encoder.no_mask_embed.weight.detach().reshape(1, 1, -1)
        self.register_buffer("no_mask", no_mask.clone(), persistent=False)
        self.t2i = layer.cross_attn_token_to_image
        self.i2t = layer.cross_attn_image_to_token

    def forward(
        self, image_embed: Tensor, feat_s0: Tensor, feat_s1: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        src = image_embed.flatten(2).transpose(1, 2) + self.no_mask
        src_pe = src + self.pe
        h = self.num_heads
        k1 = _heads(self.t2i.k_proj(src_pe), h)
        v1 = _heads(self.t2i.v_proj(src), h)
        q1 = self.i2t.q_proj(src_pe)
        return src, k1, v1, q1, nest_s1(feat_s1), nest_s0(feat_s0)


class FastMaskDecoder(nn.Module):
    """(DecoderPrep outputs, sparse prompt embeddings (N, K, D)) -> all mask logits
    (N, M, 4h, 4w) and IoU predictions (N, M): what `MaskDecoder.predict_masks` returns
    before the multimask selection."""

    def __init__(self, model: nn.Module, prep: DecoderPrep) -> None:
        super().__init__()
        md = model.sam_mask_decoder
        transformer = md.transformer
        self.md = md
        self.layers = transformer.layers
        self.final = transformer.final_attn_token_to_image
        self.norm_final = transformer.norm_final_attn
        self.num_heads = int(transformer.num_heads)
        self.register_buffer("pe", prep.pe, persistent=False)
        self.side = math.isqrt(int(prep.pe.shape[1]))  # image tokens per row (64)
        self.first_mask = 1 if md.pred_obj_scores else 0
        tokens = [md.iou_token.weight, md.mask_tokens.weight]
        if md.pred_obj_scores:
            tokens.insert(0, md.obj_score_token.weight)
        self.register_buffer("output_tokens", torch.cat(tokens).detach().clone(), persistent=False)
        self.register_buffer("eye", torch.eye(self.num_heads), persistent=False)
        dc1, ln1, act1, dc2, act2 = md.output_upscaling
        w1, b1 = _deconv_as_linear(dc1)
        w2, b2 = _deconv_as_linear(dc2)
        self.register_buffer("up1_w", w1, persistent=False)
        self.register_buffer("up1_b", b1, persistent=False)
        self.register_buffer("up2_w", w2, persistent=False)
        self.register_buffer("up2_b", b2, persistent=False)
        self.ln1, self.act1, self.act2 = ln1, act1, act2

    # -- attention, rearranged -------------------------------------------------------

    def _self_attention(
        self, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Tensor
    ) -> Tensor:
        """Upstream `Attention` over the tokens (N, T, D), padding keys masked out by
        `bias` (N, T): 0 for real tokens, a large negative number for padding."""
        h = self.num_heads
        qh, kh, vh = (
            _heads(proj(x), h) for proj, x in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v))
        )
        scores = torch.matmul(qh, kh.transpose(-1, -2)) * (1.0 / math.sqrt(qh.shape[-1]))
        probs = torch.softmax(scores + bias[:, None, None, :], dim=-1)
        return attn.out_proj(_merge(torch.matmul(probs, vh)))

    def _token_to_image(self, attn: nn.Module, q_in: Tensor, keys: Tensor) -> Tensor:
        """Tokens (N, T, D) attend to image tokens `keys` (N, S, D), + pe on the key side."""
        h = self.num_heads
        d = attn.internal_dim // h
        q = _heads(attn.q_proj(q_in), h)  # (N, H, T, d)
        n, _, t, _ = q.shape
        q_full = torch.matmul(q, _per_head(attn.k_proj, h)) * (1.0 / math.sqrt(d))  # (N,H,T,D)
        scores = torch.matmul(q_full.reshape(n, h * t, -1), (keys + self.pe).transpose(1, 2))
        probs = torch.softmax(scores, dim=-1)  # (N, H*T, S); the k bias cancels here
        pooled = torch.matmul(probs, keys).reshape(n, h, t, -1)  # (N, H, T, D)
        v = torch.matmul(pooled, _per_head(attn.v_proj, h).transpose(1, 2))
        v = v + attn.v_proj.bias.reshape(1, h, 1, d)
        return attn.out_proj(_merge(v))

    def _image_to_token(
        self, attn: nn.Module, scores: Tensor, v: Tensor, n: int, t: int, bias: Tensor
    ) -> Tensor:
        """scores (N, S, H*T) pre-softmax, v (N, H, T, d), key bias (N, T) -> output
        (N, S, D), the output projection folded into the T values."""
        h = self.num_heads
        grouped = scores.reshape(n, -1, h, t) + bias.reshape(n, 1, 1, t)
        # softmax over the few tokens, spelled out: fuses into one elementwise pass
        exp = torch.exp(grouped - grouped.amax(dim=-1, keepdim=True))
        probs = (exp / exp.sum(dim=-1, keepdim=True)).reshape(n, -1, h * t)
        wo = attn.out_proj.weight.reshape(attn.out_proj.weight.shape[0], h, -1)  # (D, H, d)
        values = torch.matmul(v, wo.permute(1, 2, 0)).reshape(n, h * t, -1)  # (N, H*T, D)
        # each head's probabilities sum to 1, so the rows of `probs` sum to H: adding
        # bias/H to every value adds the bias once (and keeps a dynamic-shape matmul free
        # of a fused bias, which OpenVINO's bf16 CPU plugin rejects)
        return torch.matmul(probs, values + attn.out_proj.bias / h)

    def _i2t_shared(
        self, attn: nn.Module, q1: Tensor, k_in: Tensor, v_in: Tensor, bias: Tensor
    ) -> Tensor:
        """Layer 1: image queries q1 (1, S, H*d) shared by all prompts."""
        h = self.num_heads
        k = _heads(attn.k_proj(k_in), h)  # (N, H, T, d)
        n, _, t, d = k.shape
        # block-diagonal (N, H*d, H*T): one matmul scores every head
        blocks = torch.einsum("nhti,hg->nhigt", k, self.eye).reshape(n, h * d, h * t)
        scores = torch.matmul(q1, blocks) * (1.0 / math.sqrt(d))
        return self._image_to_token(attn, scores, _heads(attn.v_proj(v_in), h), n, t, bias)

    def _i2t_folded(
        self, attn: nn.Module, keys_pe: Tensor, k_in: Tensor, v_in: Tensor, bias: Tensor
    ) -> Tensor:
        """Later layers: per-prompt image tokens keys_pe (N, S, D), query proj folded."""
        h = self.num_heads
        k = _heads(attn.k_proj(k_in), h)  # (N, H, T, d)
        n, _, t, d = k.shape
        scale = 1.0 / math.sqrt(d)
        folded = torch.matmul(k, _per_head(attn.q_proj, h)).reshape(n, h * t, -1) * scale
        q_bias = (k * attn.q_proj.bias.reshape(1, h, 1, d)).sum(-1).reshape(n, 1, h * t) * scale
        scores = torch.matmul(keys_pe, folded.transpose(1, 2)) + q_bias
        return self._image_to_token(attn, scores, _heads(attn.v_proj(v_in), h), n, t, bias)

    # -- forward ---------------------------------------------------------------------

    def forward(
        self,
        src: Tensor,
        k1: Tensor,
        v1: Tensor,
        q1: Tensor,
        s1: Tensor,
        s0: Tensor,
        sparse: Tensor,
        token_bias: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """token_bias (N, K): 0 for the prompt tokens, PAD_BIAS for padding that must not
        take part (graphs run at a few padded token counts; the result is the unpadded one)."""
        n = sparse.shape[0]
        h = self.num_heads
        out_tokens = self.output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat([out_tokens, sparse], dim=1)  # (N, T, D), also the query pe
        bias = torch.cat([token_bias[:, :1].mul(0).expand(n, out_tokens.shape[1]), token_bias], 1)

        first = self.layers[0]
        queries = first.norm1(self._self_attention(first.self_attn, tokens, tokens, tokens, bias))
        t2i = first.cross_attn_token_to_image
        q = _heads(t2i.q_proj(queries + tokens), h)  # (N, H, T, d)
        t = q.shape[2]
        q_all = q.transpose(0, 1).reshape(1, h, n * t, -1)  # all prompts vs shared keys
        attn = functional.scaled_dot_product_attention(q_all, k1, v1)
        attn = attn.reshape(h, n, t, -1).transpose(0, 1)  # (N, H, T, d)
        queries = first.norm2(queries + t2i.out_proj(_merge(attn)))
        queries = first.norm3(queries + first.mlp(queries))
        i2t = self._i2t_shared(first.cross_attn_image_to_token, q1, queries + tokens, queries, bias)
        keys = first.norm4(src + i2t)  # (N, S, D)

        for layer in self.layers[1:]:
            q_in = queries + tokens
            queries = layer.norm1(
                queries + self._self_attention(layer.self_attn, q_in, q_in, queries, bias)
            )
            t2i_out = self._token_to_image(layer.cross_attn_token_to_image, queries + tokens, keys)
            queries = layer.norm2(queries + t2i_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            i2t = self._i2t_folded(
                layer.cross_attn_image_to_token, keys + self.pe, queries + tokens, queries, bias
            )
            keys = layer.norm4(keys + i2t)

        final = self._token_to_image(self.final, queries + tokens, keys)
        queries = self.norm_final(queries + final)
        return self._masks(queries, keys, s1, s0)

    def _masks(self, hs: Tensor, keys: Tensor, s1: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        md = self.md
        n = keys.shape[0]
        c1 = self.ln1.weight.shape[0]
        up = torch.matmul(keys, self.up1_w.t()) + self.up1_b + s1  # (N, S, 4*C1)
        up = up.reshape(n, -1, c1)  # (N, 4S, C1) nested pixels
        up = self.act1(
            functional.layer_norm(up, (c1,), self.ln1.weight, self.ln1.bias, self.ln1.eps)
        )
        up = torch.matmul(up, self.up2_w.t()) + self.up2_b + s0  # (N, 4S, 4*C0)
        c0 = self.up2_w.shape[0] // 4
        up = self.act2(up).reshape(n, -1, c0)  # (N, 16S, C0)
        first = self.first_mask
        mask_tokens = hs[:, first + 1 : first + 1 + md.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )  # (N, M, C0)
        nested = torch.matmul(hyper, up.transpose(1, 2))  # (N, M, 16S)
        side = self.side
        m = nested.shape[1]
        grid = nested.reshape(n, m, side, side, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        masks = grid.reshape(n, m, 4 * side, 4 * side)
        return masks, md.iou_prediction_head(hs[:, first])
