"""SAM 3's instance-interactive predictor (SAM 2 style points / boxes / mask input) on a
`Sam3Features`, stateless: the math of `Sam3Image.predict_inst` ->
`SAM3InteractiveImagePredictor.predict`, without the predictor's per-image state. A mixin of
`sam3_runtime.Sam3Runtime` (it needs `self.model`, `self.device`, `self.model_id`)."""

from __future__ import annotations

import numpy as np
import torch

from sam2serve.runtime.base import Decoded, Features, PromptBatch
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_types import Sam3Features


class InstancePredictor:
    """The instance predictor's calls; `decode` / `upscale` / `inst_view` make a SAM 3
    runtime usable where the SAM 2 seam is expected (segment everything's generator)."""

    model: torch.nn.Module
    device: torch.device
    model_id: str

    def inst_view(self, features: Sam3Features) -> Features:
        """The instance predictor's features as the SAM 2 seam's `Features`, so SAM 2 style
        callers (segment everything's generator) can drive `decode` / `upscale` here."""
        if features.inst is None:
            raise ValueError(f"{self.model_id} was built without instance interactivity")
        embed, *high = features.inst
        return Features(image_embed=embed, high_res=tuple(high), orig_hw=features.orig_hw)

    @torch.inference_mode()
    def decode(self, features: Features, prompts: PromptBatch, multimask: bool) -> Decoded:
        """The SAM 2 seam's decode on SAM 3's instance predictor: N prompts (box corners
        first, then points; labels 2/3 for corners) in one prompt-encoder + mask-decoder
        call, as `SAM3InteractiveImagePredictor._predict` does. low_res (N, C, m, m)
        unclamped, scores (N, C)."""
        tracker = self.model.inst_interactive_predictor.model
        transforms = self.model.inst_interactive_predictor._transforms
        with on_device(self.device):
            coords = torch.as_tensor(prompts.coords, dtype=torch.float, device=self.device)
            coords = transforms.transform_coords(coords, normalize=True, orig_hw=features.orig_hw)
            labels = torch.as_tensor(prompts.labels, dtype=torch.int, device=self.device)
            masks = None
            if prompts.mask_input is not None:
                if prompts.has_mask is not None and not bool(np.all(prompts.has_mask)):
                    raise ValueError("SAM 3's predictor takes a mask_input for every prompt")
                masks = torch.as_tensor(prompts.mask_input, dtype=torch.float, device=self.device)
            encoder = tracker.sam_prompt_encoder
            sparse, dense = encoder(points=(coords, labels), boxes=None, masks=masks)
            low_res, scores, _, _ = tracker.sam_mask_decoder(
                image_embeddings=features.image_embed.to(self.device),
                image_pe=encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=coords.shape[0] > 1,
                high_res_features=[f.to(self.device) for f in features.high_res],
            )
        return Decoded(low_res=low_res.float(), scores=scores.float())

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """(N, m, m) logits -> (N, H, W) logits as SAM 3's predictor post-processes them:
        holes up to 256 px (at m x m) filled, then bilinear to the original size."""
        transforms = self.model.inst_interactive_predictor._transforms
        with on_device(self.device):
            return transforms.postprocess_masks(low_res[:, None], orig_hw)[:, 0]

    @torch.inference_mode()
    def interactive(
        self,
        features: Sam3Features,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prompt through SAM 3's instance predictor, as `Sam3Image.predict_inst`.

        point_coords (P, 2) pixels x, y with point_labels (P,) 1/0; box_xyxy (4,) pixels;
        mask_input (1, m, m) low-res logits of an earlier answer; any may be None (not all).
        Returns (low_res (C, m, m) float32 logits clamped to [-32, 32], as predict_inst's
        third output; scores (C,) float32); C = 3 if multimask else 1. Full-size masks:
        `upscale(torch.from_numpy(low_res_unclamped))`; predict_inst's own masks come from
        the unclamped logits, which `interactive_full` returns.
        """
        low, scores = self._interactive(
            features, point_coords, point_labels, box_xyxy, mask_input, multimask
        )
        return torch.clamp(low, -32.0, 32.0).cpu().numpy(), scores.cpu().numpy()

    @torch.inference_mode()
    def interactive_full(
        self,
        features: Sam3Features,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`predict_inst`'s three outputs: masks (C, H, W) bool, scores (C,), low_res
        (C, m, m) clamped logits."""
        low, scores = self._interactive(
            features, point_coords, point_labels, box_xyxy, mask_input, multimask
        )
        masks = self.upscale(low, features.orig_hw) > 0.0
        return (
            masks.cpu().numpy(),
            scores.cpu().numpy(),
            torch.clamp(low, -32.0, 32.0).cpu().numpy(),
        )

    def _interactive(
        self,
        features: Sam3Features,
        point_coords: np.ndarray | None,
        point_labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, m, m) unclamped logits and (C,) scores for one prompt (predict's math)."""
        coords: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        if box_xyxy is not None:
            coords.append(np.asarray(box_xyxy, dtype=np.float32).reshape(2, 2))
            labels.append(np.array([2, 3], dtype=np.int32))
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must come with point_coords")
            coords.append(np.asarray(point_coords, dtype=np.float32).reshape(-1, 2))
            labels.append(np.asarray(point_labels, dtype=np.int32).reshape(-1))
        if not coords:
            raise ValueError("an interactive prompt needs points or a box")
        masks = None
        if mask_input is not None:
            masks = np.asarray(mask_input, dtype=np.float32).reshape(
                1, 1, *np.shape(mask_input)[-2:]
            )
        batch = PromptBatch(
            coords=np.concatenate(coords)[None],
            labels=np.concatenate(labels)[None],
            mask_input=masks,
        )
        decoded = self.decode(self.inst_view(features), batch, multimask)
        return decoded.low_res[0], decoded.scores[0]
