"""SAM 3's fusion encoder with its first self-attention done once per image.

The fusion encoder (6 pre-norm layers over the s x s image tokens: self-attention, then
cross-attention to the prompt, then an FFN) meets the prompt first in layer 0's
cross-attention: SAM 3 builds it with `add_pooled_text_to_img_feat=False`, so layer 0's
self-attention reads the image alone. Meta's `_run_encoder` recomputes it for every prompt
(on the real config 8 heads x 5184 tokens, ~1/6 of the encoder: ~0.7 s fp32, ~0.15 s on the
bf16 kernel); here `first_self_attention` computes it with the image's features and
`run_encoder` starts from it. Same modules, same inputs, same order: the exact runtime's
outputs are unchanged bit for bit (tests/integration/test_sam3_fidelity.py).

`supported(model)` says whether a model is built so (pre-norm, no pooled text, no
positional encoding on the cross-attention); other models run Meta's encoder as is.
"""

from __future__ import annotations

from typing import Any

import torch


def supported(model: torch.nn.Module) -> bool:
    """Whether layer 0's self-attention of `model`'s fusion encoder depends on the image only."""
    encoder = model.transformer.encoder
    layer = encoder.layers[0]
    return (
        not encoder.add_pooled_text_to_img_feat
        and bool(layer.pre_norm)
        and not layer.pos_enc_at_cross_attn_keys
        and not layer.pos_enc_at_cross_attn_queries
    )


def _image_tokens(
    model: torch.nn.Module, backbone_out: dict, img_ids: torch.Tensor
) -> tuple[dict, tuple, list]:
    """The encoder's flattened image tokens as Meta's `_run_encoder` and
    `TransformerEncoderFusion.forward` build them (no padding masks): returns backbone_out,
    `_prepare_multilevel_features`' 6-tuple (tokens (1, T, D), masks, level positions
    (1, T, D), level starts, valid ratios, spatial shapes) and the levels' (h, w)."""
    backbone_out, img_feats, img_pos_embeds, feat_sizes = model._get_img_feats(
        backbone_out, img_ids
    )
    bs = img_feats[0].shape[1]  # seq first
    src, pos = [], []
    for feat, pe, (h, w) in zip(img_feats, img_pos_embeds, feat_sizes, strict=True):
        src.append(feat.reshape(h, w, bs, -1).permute(2, 3, 0, 1))
        pos.append(pe.reshape(h, w, bs, -1).permute(2, 3, 0, 1))
    prepared = model.transformer.encoder._prepare_multilevel_features(src, [None] * len(src), pos)
    return backbone_out, prepared, feat_sizes


def first_self_attention(
    model: torch.nn.Module, backbone_out: dict, img_ids: torch.Tensor
) -> torch.Tensor:
    """Layer 0's tokens after its self-attention and residual, (1, T, D) (T = 5184 on the
    real config): `forward_pre` up to its first cross-attention."""
    _, (tokens, _, level_pos, *_), _ = _image_tokens(model, backbone_out, img_ids)
    layer = model.transformer.encoder.layers[0]
    normed = layer.norm1(tokens)
    q = k = normed + level_pos if layer.pos_enc_at_attn else normed
    attended = layer.self_attn(q, k, value=normed, attn_mask=None, key_padding_mask=None)[0]
    return tokens + layer.dropout1(attended)


def _finish_first_layer(
    layer: torch.nn.Module, tgt: torch.Tensor, prompt: torch.Tensor, prompt_mask: Any
) -> torch.Tensor:
    """The rest of layer 0's `forward_pre` (cross-attention to the prompt, FFN) from `tgt`."""
    normed = layer.norm2(tgt)
    attended = layer.cross_attn_image(
        query=normed, key=prompt, value=prompt, attn_mask=None, key_padding_mask=prompt_mask
    )[0]
    tgt = tgt + layer.dropout2(attended)
    normed = layer.norm3(tgt)
    return tgt + layer.dropout3(
        layer.linear2(layer.dropout(layer.activation(layer.linear1(normed))))
    )


def run_encoder(
    model: torch.nn.Module,
    backbone_out: dict,
    find_input: Any,
    prompt: torch.Tensor,
    prompt_mask: torch.Tensor,
    first: torch.Tensor | None,
) -> tuple[dict, dict]:
    """Meta's `Sam3Image._run_encoder` (inference, one image), layer 0's self-attention taken
    from `first` (`first_self_attention` of the same features; None: computed here).
    prompt: (L, 1, D) seq first; prompt_mask: (1, L) True = padding. Returns (backbone_out,
    encoder_out) with encoder_out's keys as Meta's."""
    encoder = model.transformer.encoder
    if first is not None and not supported(model):
        first = None  # a model that mixes the prompt in earlier: layer 0 runs whole
    backbone_out, prepared, feat_sizes = _image_tokens(model, backbone_out, find_input.img_ids)
    tokens, masks, level_pos, level_start, valid_ratios, shapes = prepared
    memory = prompt.transpose(0, 1)
    output = tokens
    for i, layer in enumerate(encoder.layers):
        if i == 0 and first is not None:
            output = _finish_first_layer(layer, first, memory, prompt_mask)
            continue
        output = layer(
            tgt=output,
            memory=memory,
            memory_key_padding_mask=prompt_mask,
            query_pos=level_pos,
            tgt_key_padding_mask=masks,
        )
    encoder_out = {
        "encoder_hidden_states": output.transpose(0, 1),
        "pos_embed": level_pos.transpose(0, 1),
        "padding_mask": masks.transpose(0, 1) if masks is not None else None,
        "level_start_index": level_start,
        "spatial_shapes": shapes,
        "valid_ratios": valid_ratios,
        "vis_feat_sizes": feat_sizes,
        "prompt_before_enc": prompt,
        "prompt_after_enc": prompt,
        "prompt_mask": prompt_mask,
    }
    return backbone_out, encoder_out


def ground(
    model: torch.nn.Module,
    backbone_out: dict,
    find_input: Any,
    geometric_prompt: Any,
    first: torch.Tensor | None,
) -> dict:
    """Meta's `Sam3Image.forward_grounding` (inference) with `run_encoder`: the same
    outputs (scores, boxes, presence, masks of all Q queries)."""
    prompt, prompt_mask, backbone_out = model._encode_prompt(
        backbone_out, find_input, geometric_prompt
    )
    backbone_out, encoder_out = run_encoder(
        model, backbone_out, find_input, prompt, prompt_mask, first
    )
    out = {
        "encoder_hidden_states": encoder_out["encoder_hidden_states"],
        "prev_encoder_out": {"encoder_out": encoder_out, "backbone_out": backbone_out},
    }
    out, hs = model._run_decoder(
        memory=out["encoder_hidden_states"],
        pos_embed=encoder_out["pos_embed"],
        src_mask=encoder_out["padding_mask"],
        out=out,
        prompt=prompt,
        prompt_mask=prompt_mask,
        encoder_out=encoder_out,
    )
    model._run_segmentation_heads(
        out=out,
        backbone_out=backbone_out,
        img_ids=find_input.img_ids,
        vis_feat_sizes=encoder_out["vis_feat_sizes"],
        encoder_hidden_states=out["encoder_hidden_states"],
        prompt=prompt,
        prompt_mask=prompt_mask,
        hs=hs,
    )
    return out
