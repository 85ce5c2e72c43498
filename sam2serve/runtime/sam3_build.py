"""Building SAM 3's image model (Meta's `sam3` classes) at the real or a tiny size.

`build_sam3_image(config)` assembles exactly what `sam3.model_builder.build_sam3_image_model(
enable_inst_interactivity=True)` assembles (same classes, same arguments, same parameter
names) with the sizes taken from a `Sam3Config`: `REAL` is Meta's architecture (~840 M
parameters), `TINY` the same architecture with small sizes for fast tests. Loading follows
Meta's `_load_checkpoint` key mapping ("detector." -> model, "tracker." -> the instance
predictor), `weights_only=True`, and is strict: every key of the model must come from the
file and no "detector."/"tracker." key of the file may be left over.

(Longer than most modules on purpose: one function per function of Meta's builder, with the
same arguments in the same order, so the two read side by side.)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from sam2serve.runtime.sam3_device import on_device

#: sha256 of the BPE vocabulary Meta's SAM 3 tokenizer reads (`bpe_simple_vocab_16e6.txt.gz`,
#: the CLIP vocabulary; the `sam3` wheel does not ship it, `open_clip_torch` does: same file).
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


@dataclass(frozen=True)
class Sam3Config:
    """The sizes of a SAM 3 image model; `REAL` is Meta's, `TINY` a small one for tests."""

    image_size: int = 1008
    patch_size: int = 14
    vit_dim: int = 1024
    vit_depth: int = 32
    vit_heads: int = 16
    vit_window: int = 24
    vit_global_blocks: tuple[int, ...] = (7, 15, 23, 31)
    vit_pretrain_size: int = 336
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    geometry_layers: int = 3
    num_queries: int = 200
    tracker_layers: int = 4
    maskmem_size: int = 1152

    @property
    def grid(self) -> int:
        """s: the backbone's feature grid (72 on the real config)."""
        return self.image_size // self.patch_size

    def fpn_shapes(self, d_model: int = 256) -> list[tuple[int, int, int, int]]:
        s = self.grid
        return [(1, d_model, 4 * s, 4 * s), (1, d_model, 2 * s, 2 * s), (1, d_model, s, s)]

    def inst_shapes(self, d_model: int = 256) -> list[tuple[int, int, int, int]]:
        s = self.grid
        return [
            (1, d_model, s, s),
            (1, d_model // 8, 4 * s, 4 * s),
            (1, d_model // 4, 2 * s, 2 * s),
        ]

    def first_shape(self, d_model: int = 256) -> tuple[int, int, int]:
        """The concept encoder's layer 0 after its self-attention (`sam3_encoder`)."""
        return (1, self.grid * self.grid, d_model)

    def feature_nbytes(self, bytes_per_value: int = 4, first: bool = True) -> int:
        """Bytes of one image's `Sam3Features` (fp32 by default); first: whether they hold
        the concept encoder's layer 0 (`sam3_encoder.supported`)."""
        shapes = [*self.fpn_shapes(), *self.inst_shapes(), *([self.first_shape()] * first)]
        return sum(int(torch.Size(s).numel()) for s in shapes) * bytes_per_value

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


REAL = Sam3Config()
TINY = replace(
    REAL,
    image_size=112,
    vit_dim=64,
    vit_depth=2,
    vit_heads=2,
    vit_window=4,
    vit_global_blocks=(1,),
    vit_pretrain_size=56,
    text_width=64,
    text_heads=2,
    text_layers=2,
    ffn_dim=256,
    encoder_layers=1,
    decoder_layers=2,
    geometry_layers=1,
    tracker_layers=1,
    maskmem_size=128,
)
CONFIGS: dict[str, Sam3Config] = {"real": REAL, "tiny": TINY}


def bpe_path() -> Path:
    """The CLIP BPE vocabulary, from the installed `open_clip` package, checksum-verified.

    Never downloaded at run time: a missing or different file is a clear error naming the
    package to install.
    """
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    if found is None or found.origin is None:
        raise RuntimeError(
            "SAM 3's tokenizer needs bpe_simple_vocab_16e6.txt.gz from the open_clip_torch "
            "package: pip install open_clip_torch (part of sam2serve[server])"
        )
    path = Path(found.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
    if digest != BPE_SHA256:
        raise RuntimeError(
            f"{path}: expected the CLIP BPE vocabulary (sha256 {BPE_SHA256}), found {digest}"
        )
    return path


def _vit(c: Sam3Config):  # type: ignore[no-untyped-def]
    from sam3.model.vitdet import ViT

    return ViT(
        img_size=c.image_size,
        pretrain_img_size=c.vit_pretrain_size,
        patch_size=c.patch_size,
        embed_dim=c.vit_dim,
        depth=c.vit_depth,
        num_heads=c.vit_heads,
        mlp_ratio=4.625,
        norm_layer="LayerNorm",
        drop_path_rate=0.1,
        qkv_bias=True,
        use_abs_pos=True,
        tile_abs_pos=True,
        global_att_blocks=c.vit_global_blocks,
        rel_pos_blocks=(),
        use_rope=True,
        use_interp_rope=True,
        window_size=c.vit_window,
        pretrain_use_cls_token=True,
        retain_cls_token=False,
        ln_pre=True,
        ln_post=False,
        return_interm_layers=False,
        bias_patch_embed=False,
        compile_mode=None,
    )


def _mha(dropout: float, batch_first: bool | None = None):  # type: ignore[no-untyped-def]
    from sam3.model.model_misc import MultiheadAttentionWrapper

    extra = {} if batch_first is None else {"batch_first": batch_first}
    return MultiheadAttentionWrapper(num_heads=8, dropout=dropout, embed_dim=256, **extra)


def _encoder(c: Sam3Config):  # type: ignore[no-untyped-def]
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer

    layer = TransformerEncoderLayer(
        activation="relu",
        d_model=256,
        dim_feedforward=c.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=False,
        pos_enc_at_cross_attn_queries=False,
        pre_norm=True,
        self_attention=_mha(0.1, True),
        cross_attention=_mha(0.1, True),
    )
    return TransformerEncoderFusion(
        layer=layer,
        num_layers=c.encoder_layers,
        d_model=256,
        num_feature_levels=1,
        frozen=False,
        use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False,
        pool_text_with_mask=True,
    )


def _decoder(c: Sam3Config):  # type: ignore[no-untyped-def]
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer

    layer = TransformerDecoderLayer(
        activation="relu",
        d_model=256,
        dim_feedforward=c.ffn_dim,
        dropout=0.1,
        cross_attention=_mha(0.1),
        n_heads=8,
        use_text_cross_attention=True,
    )
    return TransformerDecoder(
        layer=layer,
        num_layers=c.decoder_layers,
        num_queries=c.num_queries,
        return_intermediate=True,
        box_refine=True,
        num_o2m_queries=0,
        dac=True,
        boxRPB="log",
        d_model=256,
        frozen=False,
        interaction_layer=None,
        dac_use_selfatt_ln=True,
        resolution=c.image_size,
        stride=c.patch_size,
        use_act_checkpoint=True,
        presence_token=True,
    )


def _scoring(c: Sam3Config):  # type: ignore[no-untyped-def]
    from sam3.model.model_misc import MLP, DotProductScoring

    prompt_mlp = MLP(
        input_dim=256,
        hidden_dim=c.ffn_dim,
        output_dim=256,
        num_layers=2,
        dropout=0.1,
        residual=True,
        out_norm=nn.LayerNorm(256),
    )
    return DotProductScoring(d_model=256, d_proj=256, prompt_mlp=prompt_mlp)


def _geometry(c: Sam3Config):  # type: ignore[no-untyped-def]
    from sam3.model.encoder import TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.memory import CXBlock
    from sam3.model_builder import _create_position_encoding

    layer = TransformerEncoderLayer(
        activation="relu",
        d_model=256,
        dim_feedforward=c.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=_mha(0.1, False),
        pos_enc_at_cross_attn_queries=False,
        pos_enc_at_cross_attn_keys=True,
        cross_attention=_mha(0.1, False),
    )
    # Meta's builder makes (and never uses) this block here; kept so that a seeded random
    # init draws the same numbers as Meta's builder does
    CXBlock(dim=256, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True)
    return SequenceGeometryEncoder(
        pos_enc=_create_position_encoding(),
        encode_boxes_as_points=False,
        points_direct_project=True,
        points_pool=True,
        points_pos_enc=True,
        boxes_direct_project=True,
        boxes_pool=True,
        boxes_pos_enc=True,
        d_model=256,
        num_layers=c.geometry_layers,
        layer=layer,
        use_act_ckpt=True,
        add_cls=True,
        add_post_encode_proj=True,
    )


def _tracker(c: Sam3Config):  # type: ignore[no-untyped-def]
    """Meta's `build_tracker(apply_temporal_disambiguation=False)` at the config's sizes."""
    from sam3.model.decoder import TransformerDecoderLayerv2, TransformerEncoderCrossAttention
    from sam3.model.memory import (
        CXBlock,
        SimpleFuser,
        SimpleMaskDownSampler,
        SimpleMaskEncoder,
    )
    from sam3.model.model_misc import TransformerWrapper
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor
    from sam3.sam.transformer import RoPEAttention

    s = c.grid
    maskmem = SimpleMaskEncoder(
        out_dim=64,
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=64,
            normalize=True,
            scale=None,
            temperature=10000,
            precompute_resolution=c.image_size,
        ),
        mask_downsampler=SimpleMaskDownSampler(
            kernel_size=3, stride=2, padding=1, interpol_size=[c.maskmem_size, c.maskmem_size]
        ),
        fuser=SimpleFuser(
            layer=CXBlock(
                dim=256, kernel_size=7, padding=3, layer_scale_init_value=1.0e-06, use_dwconv=True
            ),
            num_layers=2,
        ),
    )
    rope = {"rope_theta": 10000.0, "feat_sizes": [s, s], "use_fa3": False, "use_rope_real": False}
    layer = TransformerDecoderLayerv2(
        cross_attention_first=False,
        activation="relu",
        dim_feedforward=c.ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pre_norm=True,
        self_attention=RoPEAttention(
            embedding_dim=256, num_heads=1, downsample_rate=1, dropout=0.1, **rope
        ),
        d_model=256,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        cross_attention=RoPEAttention(
            embedding_dim=256,
            num_heads=1,
            downsample_rate=1,
            dropout=0.1,
            kv_in_dim=64,
            rope_k_repeat=True,
            **rope,
        ),
    )
    encoder = TransformerEncoderCrossAttention(
        remove_cross_attention_layers=[],
        batch_first=True,
        d_model=256,
        frozen=False,
        pos_enc_at_input=True,
        layer=layer,
        num_layers=c.tracker_layers,
        use_act_checkpoint=False,
    )
    return Sam3TrackerPredictor(
        image_size=c.image_size,
        num_maskmem=7,
        backbone=None,
        backbone_stride=c.patch_size,
        transformer=TransformerWrapper(encoder=encoder, decoder=None, d_model=256),
        maskmem_backbone=maskmem,
        multimask_output_in_sam=True,
        forward_backbone_per_frame_for_eval=True,
        trim_past_non_cond_mem_for_eval=False,
        multimask_output_for_tracking=True,
        multimask_min_pt_num=0,
        multimask_max_pt_num=1,
        always_start_from_first_ann_frame=False,
        non_overlap_masks_for_mem_enc=False,
        non_overlap_masks_for_output=False,
        max_cond_frames_in_attn=4,
        offload_output_to_cpu_for_eval=False,
        sam_mask_decoder_extra_args={
            "dynamic_multimask_via_stability": True,
            "dynamic_multimask_stability_delta": 0.05,
            "dynamic_multimask_stability_thresh": 0.98,
        },
        clear_non_cond_mem_around_input=True,
        fill_hole_area=0,
        use_memory_selection=False,
    )


def build_sam3_image(config: Sam3Config, device: torch.device) -> nn.Module:
    """Meta's SAM 3 image model (`Sam3Image`, instance interactivity on) at `config`'s sizes,
    randomly initialized (torch's default init; the tensors Meta leaves to the checkpoint
    are NOT initialized here: load a checkpoint or call `seed_uninitialized`), eval mode."""
    from sam3 import model_builder as mb
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.sam1_task_predictor import SAM3InteractiveImagePredictor
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer

    with on_device(torch.device("cpu")):
        neck = Sam3DualViTDetNeck(
            position_encoding=mb._create_position_encoding(precompute_resolution=c_res(config)),
            d_model=256,
            scale_factors=[4.0, 2.0, 1.0, 0.5],
            trunk=_vit(config),
            add_sam2_neck=True,
        )
        text = VETextEncoder(
            tokenizer=SimpleTokenizer(bpe_path=str(bpe_path())),
            d_model=256,
            width=config.text_width,
            heads=config.text_heads,
            layers=config.text_layers,
        )
        inst = SAM3InteractiveImagePredictor(_tracker(config))
        s = config.grid
        inst._bb_feat_sizes = [(4 * s, 4 * s), (2 * s, 2 * s), (s, s)]
        model = mb._create_sam3_model(
            mb._create_vl_backbone(neck, text),
            mb.TransformerWrapper(encoder=_encoder(config), decoder=_decoder(config), d_model=256),
            _geometry(config),
            mb._create_segmentation_head(compile_mode=None),
            _scoring(config),
            inst,
            True,
        )
    return model.to(device).eval()


def c_res(config: Sam3Config) -> int:
    """The resolution Meta precomputes position encodings for (the input size)."""
    return config.image_size


#: Parameters Meta's builder leaves as `torch.empty` (the checkpoint fills them).
UNINITIALIZED = (
    "backbone.language_backbone.encoder.positional_embedding",
    "backbone.language_backbone.encoder.text_projection",
)


def seed_uninitialized(model: nn.Module, seed: int) -> None:
    """Give the `torch.empty` tensors a seeded init (else random-weight outputs are NaN)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in UNINITIALIZED:
            p = params[name]
            p.copy_(torch.randn(p.shape, generator=gen) * 0.01)


def checkpoint_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in Meta's `sam3.pt` layout: {"detector.<k>", "tracker.<k>"}."""
    out: dict[str, torch.Tensor] = {}
    inst_prefix = "inst_interactive_predictor.model."
    for key, value in model.state_dict().items():
        if key.startswith(inst_prefix):
            out["tracker." + key[len(inst_prefix) :]] = value
        else:
            out["detector." + key] = value
    return out


def load_sam3_checkpoint(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load `path` (Meta's `sam3.pt` format) into `model` with Meta's key mapping,
    `weights_only=True`. Returns (missing, unexpected) keys; the caller refuses any."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict):
        raise ValueError(f"{path.name} is not a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in payload.items():
        if not isinstance(key, str):
            continue
        if key.startswith("detector."):
            state[key[len("detector.") :]] = value
        elif key.startswith("tracker."):
            state["inst_interactive_predictor.model." + key[len("tracker.") :]] = value
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
