"""The SAM 3 runtime: Meta's `sam3` image model in eager torch (fp32, exact), stateless.

The same math as Meta's `Sam3Processor` (concept prompts: text and/or exemplar boxes) and
`Sam3Image.predict_inst` (the instance-interactive, SAM 2 style point/box predictor), but
never the stateful processor: per-image state is a `Sam3Features` the caller owns (and may
cache), per-phrase state a `TextEmbedding`. Only `sam2serve.runtime` touches SAM 3 internals.

    runtime = build_sam3_runtime(spec, weights_path, torch.device("cpu"))
    features = runtime.embed(rgb)                       # ~ Sam3Processor.set_image
    [text] = runtime.encode_text(["yellow school bus"]) # ~ the text half of set_text_prompt
    out = runtime.concept(features, text, boxes, labels)  # pre-threshold, all Q queries
    keep = np.flatnonzero(out.scores > 0.5)
    masks = runtime.masks(features, out, keep)          # (K, H, W) bool, as Sam3Processor
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sam2serve.registry import ModelSpec
from sam2serve.runtime import sam3_encoder
from sam2serve.runtime.sam3_build import (
    CONFIGS,
    Sam3Config,
    build_sam3_image,
    load_sam3_checkpoint,
)
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_interactive import InstancePredictor
from sam2serve.runtime.sam3_types import ConceptOutput, Sam3Features, TextEmbedding
from sam2serve.runtime.weights import WeightsError, missing_weights_message

__all__ = [
    "ConceptOutput",
    "Sam3Features",
    "Sam3Runtime",
    "TextEmbedding",
    "boxes_to_prompt",
    "build_sam3_runtime",
]

log = logging.getLogger(__name__)

#: The phrase Meta's processor encodes when a prompt has boxes and no text.
VISUAL_PHRASE = "visual"
#: Output masks are upsampled this many at a time (bounds the float32 working memory).
_MASK_CHUNK = 8


def boxes_to_prompt(boxes_xyxy: np.ndarray, orig_hw: tuple[int, int]) -> list[list[float]]:
    """Absolute XYXY pixel boxes (N, 4) -> what `Sam3Processor.add_geometric_prompt` takes:
    normalized [cx, cy, w, h] lists (float64 math, float32 in the model)."""
    h, w = orig_hw
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) / 2 / w
    cy = (b[:, 1] + b[:, 3]) / 2 / h
    bw = (b[:, 2] - b[:, 0]) / w
    bh = (b[:, 3] - b[:, 1]) / h
    return np.stack([cx, cy, bw, bh], axis=1).tolist()


def config_for(spec: ModelSpec) -> Sam3Config:
    """The architecture sizes of a SAM 3 spec (`spec.config` is "real" or "tiny")."""
    try:
        return CONFIGS[spec.config]
    except KeyError:
        raise ValueError(f"{spec.model_id}: unknown SAM 3 config {spec.config!r}") from None


def load_model(spec: ModelSpec, checkpoint: Path | None, device: torch.device) -> torch.nn.Module:
    """Build `spec`'s architecture and load `checkpoint` (weights_only, strict); None leaves
    the random init (tests seed it and save it as a checkpoint)."""
    model = build_sam3_image(config_for(spec), torch.device("cpu"))
    if checkpoint is not None:
        try:
            missing, unexpected = load_sam3_checkpoint(model, checkpoint)
        except Exception as exc:  # unpickling refused, truncated file, not a zip...
            raise WeightsError(
                missing_weights_message(
                    spec, checkpoint.parent, f"{checkpoint.name} is unreadable: {exc}"
                )
            ) from exc
        if missing or unexpected:
            detail = (
                f"{checkpoint.name} does not match {spec.model_id}: "
                f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
            raise WeightsError(missing_weights_message(spec, checkpoint.parent, detail))
    return model.to(device).eval()


def build_sam3_runtime(spec: ModelSpec, weights_path: Path, device: torch.device) -> Sam3Runtime:
    """The `ModelPool` factory for SAM 3 specs: build, load strictly, wrap."""
    return Sam3Runtime(spec.model_id, load_model(spec, weights_path, device), device)


class Sam3Runtime(InstancePredictor):
    """Eager SAM 3 (fp32). Thread-safe for concurrent calls: holds no per-image state."""

    precision = "fp32"

    def __init__(self, model_id: str, model: torch.nn.Module, device: torch.device) -> None:
        from torchvision.transforms import v2

        self.model_id = model_id
        self.model = model
        self.device = device
        self.config_image_size = int(model.inst_interactive_predictor.model.image_size)
        size = self.config_image_size
        # Sam3Processor's transform, verbatim
        self.transform = v2.Compose(
            [
                v2.ToDtype(torch.uint8, scale=True),
                v2.Resize(size=(size, size)),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
            ]
        )
        with on_device(device):
            self._find_stage = self._make_find_stage()

    # ----- sizes -----------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """The square input size (1008 on the real config)."""
        return self.config_image_size

    @property
    def num_queries(self) -> int:
        """Q: queries per concept prompt (200 on the real config)."""
        return int(self.model.transformer.decoder.num_queries)

    @property
    def low_res_size(self) -> int:
        """m: the instance-interactive predictor's low-res mask size (288 on the real config)."""
        return int(self.model.inst_interactive_predictor.model.low_res_mask_size)

    @property
    def feature_nbytes(self) -> int:
        """Bytes of one image's `Sam3Features` on this model (fp32)."""
        stride = int(self.model.inst_interactive_predictor.model.backbone_stride)
        sizes = Sam3Config(image_size=self.image_size, patch_size=stride)
        return sizes.feature_nbytes(first=sam3_encoder.supported(self.model))

    # ----- image ----------------------------------------------------------------------

    def _make_find_stage(self):  # type: ignore[no-untyped-def]
        from sam3.model.data_misc import FindStage

        ids = torch.tensor([0], device=self.device, dtype=torch.long)
        return FindStage(
            img_ids=ids,
            text_ids=ids.clone(),
            input_boxes=None,
            input_boxes_mask=None,
            input_boxes_label=None,
            input_points=None,
            input_points_mask=None,
        )

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32, as `Sam3Processor.set_image`."""
        from torchvision.transforms import v2

        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        image = v2.functional.to_image(rgb).to(self.device)
        return self.transform(image).unsqueeze(0)

    @torch.inference_mode()
    def embed(self, rgb: np.ndarray) -> Sam3Features:
        """(H, W, 3) uint8 RGB -> Sam3Features: the ViT trunk once, then both necks (what
        `Sam3Processor.set_image` computes, split so `pack` can keep the trunk's output)."""
        return self.expand(self.trunk(rgb), (int(rgb.shape[0]), int(rgb.shape[1])))

    @torch.inference_mode()
    def trunk(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> the ViT trunk's last output (1, C, s, s) (C = 1024, s = 72
        on the real config): ~90 % of an embed's work; `expand` does the rest."""
        with on_device(self.device):
            return self.model.backbone.vision_backbone.trunk(self.preprocess(rgb))[-1]

    @torch.inference_mode()
    def expand(self, trunk_out: torch.Tensor, orig_hw: tuple[int, int]) -> Sam3Features:
        """The trunk's output -> Sam3Features: both necks (`necks`), then the fusion
        encoder's first self-attention, which reads the image alone (`sam3_encoder`)."""
        fpn, inst = self.necks(trunk_out)
        return Sam3Features(
            fpn=fpn, inst=inst, orig_hw=orig_hw, encoder_first=self.encoder_first(fpn)
        )

    @torch.inference_mode()
    def encoder_first(self, fpn: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        """The fusion encoder's layer 0 after its self-attention (1, s*s, D), or None where
        the model's encoder mixes the prompt in earlier."""
        if not sam3_encoder.supported(self.model):
            return None
        with on_device(self.device):
            backbone_out = self._backbone_out(fpn)
            return sam3_encoder.first_self_attention(
                self.model, backbone_out, self._find_stage.img_ids
            )

    @torch.inference_mode()
    def necks(
        self, trunk_out: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
        """The trunk's output -> (fpn, inst) through both necks, exactly as
        `Sam3DualViTDetNeck.forward` + `SAM3VLBackbone.forward_image` (scalp) do."""
        neck = self.model.backbone.vision_backbone
        scalp = int(self.model.backbone.scalp)
        with on_device(self.device):
            x = trunk_out.to(self.device)
            sam3_out = [conv(x) for conv in neck.convs]
            sam2_out = (
                [conv(x) for conv in neck.sam2_convs] if neck.sam2_convs is not None else None
            )
            if scalp > 0:
                sam3_out = sam3_out[:-scalp]
                sam2_out = sam2_out[:-scalp] if sam2_out is not None else None
        inst = None
        if sam2_out is not None:
            pos = [neck.position_encoding(f).to(f.dtype) for f in sam2_out]
            inst = self._inst_features({"backbone_fpn": sam2_out, "vision_pos_enc": pos})
        return tuple(sam3_out), inst

    def pack(self, trunk_out: torch.Tensor, orig_hw: tuple[int, int]) -> bytes:
        """The compact, exact form of one image for a shared tier: the trunk's output
        (21.2 MB fp32 on the real config instead of `Sam3Features`' 138.0 MB); `unpack`
        re-runs the necks (~10 % of an embed) and gives features equal bit for bit."""
        nhwc = trunk_out.detach().cpu().permute(0, 2, 3, 1).contiguous()  # the trunk's layout
        holder = Sam3Features(fpn=(nhwc,), inst=None, orig_hw=orig_hw)
        return b"S3TK" + holder.to_bytes()

    def unpack(self, data: bytes) -> Sam3Features:
        """`pack`'s bytes -> Sam3Features; ValueError on anything else."""
        if data[:4] != b"S3TK":
            raise ValueError("not a packed SAM 3 image")
        holder = Sam3Features.from_bytes(data[4:])
        if len(holder.fpn) != 1 or holder.inst is not None or holder.fpn[0].ndim != 4:
            raise ValueError("not a packed SAM 3 image")
        return self.expand(holder.fpn[0].permute(0, 3, 1, 2), holder.orig_hw)

    def _inst_features(self, sam2: dict) -> tuple[torch.Tensor, ...]:
        """The SAM 2 neck's output -> (image_embed, high_res_0, high_res_1), exactly what
        `Sam3Processor.set_image` + `Sam3Image.predict_inst` hand to the predictor."""
        tracker = self.model.inst_interactive_predictor.model
        predictor = self.model.inst_interactive_predictor
        with on_device(self.device):
            fpn = list(sam2["backbone_fpn"])
            fpn[0] = tracker.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = tracker.sam_mask_decoder.conv_s1(fpn[1])
            backbone_out = {**sam2, "backbone_fpn": fpn}
            _, vision_feats, _, _ = tracker._prepare_backbone_features(backbone_out)
            vision_feats[-1] = vision_feats[-1] + tracker.no_mem_embed
            feats = [
                feat.permute(1, 2, 0).view(1, -1, *feat_size)
                for feat, feat_size in zip(
                    vision_feats[::-1], predictor._bb_feat_sizes[::-1], strict=True
                )
            ][::-1]
        return (feats[-1], *feats[:-1])

    # ----- text -----------------------------------------------------------------------

    @torch.inference_mode()
    def encode_text(self, phrases: list[str]) -> list[TextEmbedding]:
        """Each phrase through the text encoder on its own (as `set_text_prompt` does: one
        caption per call, so a phrase's embedding does not depend on its neighbours)."""
        out: list[TextEmbedding] = []
        with on_device(self.device):
            for phrase in phrases:
                t = self.model.backbone.forward_text([phrase], device=self.device)
                out.append(
                    TextEmbedding(
                        phrase=phrase,
                        features=t["language_features"],
                        mask=t["language_mask"],
                    )
                )
        return out

    # ----- concept prompts --------------------------------------------------------------

    def _pos_enc(self, fpn: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Position encodings of the levels the detector reads (`num_feature_levels`, the
        last ones: 1 on SAM 3): `forward_grounding` takes `vision_pos_enc[-n:]` and nothing
        else reads them. Meta's set_image computes all three once per image; per call here,
        the 288² level alone was a 85 MB copy (the encoding's cache hands out a `repeat`)."""
        pe = self.model.backbone.vision_backbone.position_encoding
        n = int(self.model.num_feature_levels)
        return [pe(x).to(x.dtype) for x in fpn[-n:]]

    @torch.inference_mode()
    def concept(
        self,
        features: Sam3Features,
        text: TextEmbedding | None,
        boxes_xyxy: np.ndarray,
        box_labels: np.ndarray,
    ) -> ConceptOutput:
        """One concept prompt -> the detector's pre-threshold output for all Q queries.

        text: the phrase's embedding; None with boxes = exemplar boxes only (Meta encodes
            the phrase "visual" then: pass `encode_text(["visual"])[0]` to cache it, else it
            is encoded here).
        boxes_xyxy: (N, 4) absolute pixel XYXY boxes of the original image, N may be 0.
        box_labels: (N,) bool, True = positive exemplar, False = negative.
        Same math as `Sam3Processor.set_text_prompt` / `add_geometric_prompt` (boxes added
        in order) up to its threshold.
        """
        boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        box_labels = np.asarray(box_labels, dtype=bool).reshape(-1)
        if len(boxes_xyxy) != len(box_labels):
            raise ValueError("boxes_xyxy and box_labels differ in length")
        if text is None:
            if len(boxes_xyxy) == 0:
                raise ValueError("a concept prompt needs a text, boxes or both")
            text = self.encode_text([VISUAL_PHRASE])[0]
        with on_device(self.device):
            prompt = self.model._get_dummy_prompt()
            for box, label in zip(
                boxes_to_prompt(boxes_xyxy, features.orig_hw), box_labels.tolist(), strict=True
            ):
                b = torch.tensor(box, device=self.device, dtype=torch.float32).view(1, 1, 4)
                lab = torch.tensor([label], device=self.device, dtype=torch.bool).view(1, 1)
                prompt.append_boxes(b, lab)
            backbone_out = self._backbone_out(features.fpn)
            backbone_out["language_features"] = text.features.to(self.device)
            backbone_out["language_mask"] = text.mask.to(self.device)
            first = features.encoder_first
            if first is not None:
                first = first.to(self.device)
            outputs, segment_later = self._ground(backbone_out, prompt, first)
            from sam3.model import box_ops

            out_probs = outputs["pred_logits"].sigmoid()
            presence = outputs["presence_logit_dec"].sigmoid().unsqueeze(1)
            scores = (out_probs * presence).squeeze(-1)[0]
            h, w = features.orig_hw
            boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"][0])
            scale = torch.tensor([w, h, w, h]).to(self.device)
            boxes = boxes * scale[None, :]
        return ConceptOutput(
            mask_logits=None if segment_later else outputs["pred_masks"][0].float(),
            boxes_xyxy=boxes.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            logits=outputs["pred_logits"][0, :, 0].float().cpu().numpy(),
            presence=float(presence.reshape(-1)[0]),
            segment_later=segment_later,
        )

    def _backbone_out(self, fpn: tuple[torch.Tensor, ...]) -> dict:
        """The image half of what `forward_grounding` reads (the text half is added per call)."""
        levels = [f.to(self.device) for f in fpn]
        return {
            "vision_features": levels[-1],
            "vision_pos_enc": self._pos_enc(tuple(levels)),
            "backbone_fpn": levels,
            "sam2_backbone_out": None,
        }

    def _ground(
        self, backbone_out: dict, prompt: object, first: torch.Tensor | None
    ) -> tuple[dict, Callable[[torch.Tensor], torch.Tensor] | None]:
        """Meta's `forward_grounding`, the encoder starting from the image's `first` self-
        attention when it has one: masks of all Q queries at once (no deferral)."""
        outputs = sam3_encoder.ground(self.model, backbone_out, self._find_stage, prompt, first)
        return outputs, None

    @torch.inference_mode()
    def masks(self, features: Sam3Features, out: ConceptOutput, keep: np.ndarray) -> np.ndarray:
        """(K, H, W) bool at the original size for the kept query indices, as Sam3Processor:
        bilinear upsample (align_corners=False), sigmoid, > 0.5; a few masks at a time."""
        from torch.nn.functional import interpolate

        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        h, w = features.orig_hw
        result = np.zeros((len(keep), h, w), dtype=bool)
        for start in range(0, len(keep), _MASK_CHUNK):
            idx = torch.as_tensor(keep[start : start + _MASK_CHUNK])
            low = out.low_res(idx).unsqueeze(1)
            up = interpolate(low, (h, w), mode="bilinear", align_corners=False).sigmoid()
            result[start : start + len(idx)] = (up[:, 0] > 0.5).cpu().numpy()
        return result
