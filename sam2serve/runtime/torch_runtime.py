"""The torch runtime: Meta's SAM2 modules in eager torch (fp32, exact).

It uses the model's own modules (image encoder, prompt encoder, mask decoder) and the
upstream transforms (only `sam2serve.runtime` touches SAM2 internals), but never the
stateful `SAM2ImagePredictor`: per-image state lives in `Features`, which the caller owns,
so one runtime serves concurrent requests.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Decoded, Features, PromptBatch
from sam2serve.runtime.weights import WeightsError, missing_weights_message

log = logging.getLogger(__name__)


def build_model(spec: ModelSpec, checkpoint: Path | None, device: torch.device) -> torch.nn.Module:
    """Instantiate the SAM2 architecture of `spec` and load `checkpoint` strictly.

    The checkpoint is Meta's format, `{"model": state_dict}`, read with weights_only=True.
    `checkpoint=None` leaves the seeded random init (tests save such models as checkpoints).
    """
    from sam2.build_sam import build_sam2

    # apply_postprocessing=True is what upstream and Roboflow's server use: it turns on
    # dynamic multimask fallback via stability scores for single-mask requests.
    model = build_sam2(
        spec.config,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=list(spec.overrides),
        apply_postprocessing=True,
    )
    if checkpoint is not None:
        load_checkpoint(model, spec, checkpoint)
    return model.to(device).eval()


def load_checkpoint(model: torch.nn.Module, spec: ModelSpec, checkpoint: Path) -> None:
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a zip...
        raise WeightsError(
            missing_weights_message(
                spec, checkpoint.parent, f"{checkpoint.name} is unreadable: {type(exc).__name__}"
            )
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise WeightsError(
            missing_weights_message(
                spec, checkpoint.parent, f"{checkpoint.name} is not a {{'model': state_dict}} file"
            )
        )
    result = model.load_state_dict(payload["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        detail = (
            f"{checkpoint.name} does not match {spec.model_id}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
        raise WeightsError(missing_weights_message(spec, checkpoint.parent, detail))


class TorchRuntime:
    """Eager SAM2: fp32 on CPU; bf16 autocast on CUDA, as upstream does."""

    def __init__(self, model_id: str, model: torch.nn.Module, device: torch.device) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.model_id = model_id
        self.model = model
        self.device = device
        self.transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=0.0)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def low_res_size(self) -> int:
        return int(self.model.sam_prompt_encoder.mask_input_size[0])

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def embed(self, rgb: np.ndarray) -> Features:
        """rgb: (H, W, 3) uint8 RGB -> Features (same math as SAM2ImagePredictor.set_image)."""
        return self.embed_batch([rgb])[0]

    @torch.inference_mode()
    def embed_batch(self, rgbs: list[np.ndarray]) -> list[Features]:
        """B images in one encoder call (all are resized to the model's S x S input)."""
        x = torch.stack([self.transforms(rgb) for rgb in rgbs]).to(self.device)  # (B, 3, S, S)
        with self._autocast():
            out = self.model.forward_image(x)
        fpn = out["backbone_fpn"][-self.model.num_feature_levels :]
        embed = fpn[-1]
        if self.model.directly_add_no_mem_embed:
            embed = embed + self.model.no_mem_embed.reshape(1, -1, 1, 1)
        # a cached image must not keep the whole batch's tensors alive: copy rows out of a
        # real batch (a batch of one is already its own tensor)
        row = (lambda t, i: t) if len(rgbs) == 1 else (lambda t, i: t[i : i + 1].clone())
        return [
            Features(
                image_embed=row(embed, i),
                high_res=tuple(row(f, i) for f in fpn[:-1]),
                orig_hw=(int(rgb.shape[0]), int(rgb.shape[1])),
            )
            for i, rgb in enumerate(rgbs)
        ]

    @torch.inference_mode()
    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        """All N prompts in one prompt-encoder + one mask-decoder call.

        Returns low_res (N, C, m, m) unclamped logits and scores (N, C); C = 3 if multimask
        else 1.
        """
        h, w = features.orig_hw
        coords = torch.as_tensor(prompts.coords, dtype=torch.float32, device=self.device)
        coords = self.transforms.transform_coords(coords, normalize=True, orig_hw=(h, w))
        labels = torch.as_tensor(prompts.labels, dtype=torch.int32, device=self.device)
        n = coords.shape[0]

        encoder = self.model.sam_prompt_encoder
        sparse, dense = encoder(points=(coords, labels), boxes=None, masks=None)
        if prompts.mask_input is not None:
            rows = (
                torch.ones(n, dtype=torch.bool)
                if prompts.has_mask is None
                else torch.as_tensor(prompts.has_mask, dtype=torch.bool)
            )
            idx = torch.nonzero(rows).flatten().to(self.device)
            if len(idx):
                masks = torch.as_tensor(prompts.mask_input, dtype=torch.float32)
                masks = masks.to(self.device)[idx]
                _, dense_masked = encoder(
                    points=(coords[idx], labels[idx]), boxes=None, masks=masks
                )
                dense = dense.clone()
                dense[idx] = dense_masked

        high_res = [f.to(self.device) for f in features.high_res]
        with self._autocast():
            low_res, scores, _, _ = self.model.sam_mask_decoder(
                image_embeddings=features.image_embed.to(self.device),
                image_pe=encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=n > 1,
                high_res_features=high_res,
            )
        return Decoded(low_res=low_res.float(), scores=scores.float())

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, m, m) logits -> (N, H, W) logits, bilinear as upstream's postprocess_masks."""
        return self.transforms.postprocess_masks(low_res[:, None], orig_hw)[:, 0]
