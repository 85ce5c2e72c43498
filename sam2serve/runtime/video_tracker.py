"""Video tracking on Meta's `SAM2VideoPredictor` methods, with per-session state we own.

`SAM2VideoPredictor` keeps no per-video state on itself: every method takes an
`inference_state` dict. Upstream builds that dict with `init_state`, which loads every frame
as a float tensor (12 MiB per 1024 px frame) and caches one frame's features. We build the
dict ourselves instead:

* frames come from a `FrameReader` (uint8, S x S, read on demand, e.g. from a memmap on disk)
  and are normalised exactly as upstream's frame loader does (``/255``, ImageNet mean/std);
* `cached_features` is a `FeatureStore`: a byte-bounded LRU of per-frame backbone outputs
  that computes a frame on a miss (upstream only reads it with ``.get``, so it never sees a
  miss and never replaces it), with the frame-independent position encodings stored once.

Everything else (prompt handling, consolidation across objects, memory encoding, memory
attention, forward/backward propagation) is upstream's own code, so the exact path equals
`SAM2VideoPredictor` by construction. The fast path swaps modules, not code: the image
encoder for an image runtime's `embed`, and memory attention + memory encoder for compiled
graphs (`ModelParts`, e.g. `openvino_video.VideoGraphs`). This and `openvino_video` are the
only video modules touching SAM2 internals.

Stopping: upstream tracks a frame one object at a time (and consolidates prompts one object
at a time before the first frame), so one frame of many objects is many model calls. A
session's state carries a stop flag (`VideoTracker.stop`) that is checked before each of
those per-object calls: a propagation whose client has gone stops within the frame
(`Stopped`), not after it.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from sam2serve.registry import ModelSpec
from sam2serve.runtime.base import Features

IMG_MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
IMG_STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]


class ModelParts(Protocol):
    """Replacements for some of a video model's modules (same calls, other backend)."""

    def install(self, model: torch.nn.Module) -> None:
        """Put the replacements into `model` (once, before it tracks anything)."""
        ...

    def describe(self) -> dict[str, str]:
        """{module name: what runs it}, for /info."""
        ...


class FrameReader(Protocol):
    """Frames of one clip, already resized to the model's S x S input."""

    def __len__(self) -> int: ...

    def frame(self, index: int) -> np.ndarray:
        """(S, S, 3) uint8 RGB."""
        ...


@dataclass(frozen=True)
class FrameMasks:
    """One frame's result for every object of the session.

    object_ids: the client's ids, in the session's object order
    logits: (N, H, W) float32 mask logits at the video's resolution (mask = logits > 0)
    scores: (N,) float32 object-presence probability (sigmoid of the object score logit)
    """

    frame_index: int
    object_ids: list[int]
    logits: np.ndarray
    scores: np.ndarray


def build_video_model(spec: ModelSpec, checkpoint: Any, device: torch.device) -> torch.nn.Module:
    """Meta's `SAM2VideoPredictor` for `spec`, weights loaded strictly (as upstream builds it)."""
    from sam2.build_sam import build_sam2_video_predictor

    return build_sam2_video_predictor(
        spec.config,
        ckpt_path=str(checkpoint) if checkpoint is not None else None,
        device=str(device),
        mode="eval",
        hydra_overrides_extra=list(spec.overrides),
    )


def _nbytes(obj: Any, seen: set[int]) -> int:
    """Bytes of all distinct tensor storages reachable from nested dicts/lists/tuples."""
    if isinstance(obj, torch.Tensor):
        ptr = obj.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v, seen) for v in obj)
    return 0


def _float_memories(model: torch.nn.Module) -> None:
    """Let memory attention take bf16-only memories on fp32 weights.

    Upstream stores mask memories as bfloat16 and concatenates them with the float32 object
    pointers, which promotes the memory to float32. When a frame has no object pointer (e.g.
    tracking backward from a frame past every prompt near the clip's end), the memory stays
    bfloat16 and, outside CUDA autocast, upstream fails with a dtype error. Casting it to
    float32 is exactly what the promotion does in every other case, so results elsewhere are
    unchanged.
    """
    attention = model.memory_attention
    if getattr(attention, "_sam2serve_float_memories", False):
        return

    def hook(_: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        for key in ("memory", "memory_pos"):
            value = kwargs.get(key)
            is_bf16 = isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16
            if is_bf16 and not torch.is_autocast_enabled(value.device.type):
                kwargs[key] = value.float()
        return args, kwargs

    attention.register_forward_pre_hook(hook, with_kwargs=True)
    attention._sam2serve_float_memories = True


#: key of a session state's stop flag (a `threading.Event`)
STOP_KEY = "sam2serve_stop"


class Stopped(Exception):
    """A propagation step was stopped between two objects (`VideoTracker.stop`)."""


def _stoppable(model: torch.nn.Module) -> None:
    """Check the state's stop flag before each per-object model call of upstream's tracking
    (`_run_single_frame_inference`: one object on one frame) and prompt consolidation
    (`_run_memory_encoder`). Instance attributes, once per model; states without the flag
    run as upstream."""
    if getattr(model, "_sam2serve_stoppable", False):
        return
    for name in ("_run_single_frame_inference", "_run_memory_encoder"):
        original = getattr(model, name)

        @functools.wraps(original)
        def checked(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            state = kwargs.get("inference_state", args[0] if args else None)
            flag = state.get(STOP_KEY) if isinstance(state, dict) else None
            if flag is not None and flag.is_set():
                raise Stopped("stopped between objects")
            return _original(*args, **kwargs)

        setattr(model, name, checked)
    model._sam2serve_stoppable = True


class FeatureStore:
    """Byte-bounded LRU of per-frame backbone outputs, read by upstream as a dict.

    Values are `(image_placeholder, backbone_out)` as upstream's `_get_image_feature` expects;
    the image itself is never used downstream, so a (1, 3, 1, 1) placeholder stands in.
    `encode(index)` returns what is kept per frame (e.g. bf16 features of the fast runtime,
    half the bytes of float32) and `finish` turns it into `backbone_fpn` (list of
    (1, C, h, w)) on every read; position encodings depend only on shapes, so they are
    computed once and shared by every frame.
    """

    def __init__(
        self,
        encode: Callable[[int], list[torch.Tensor]],
        pos_enc: Callable[[list[torch.Tensor]], list[torch.Tensor]],
        max_bytes: int,
        finish: Callable[[list[torch.Tensor]], list[torch.Tensor]] = list,
    ) -> None:
        self._encode = encode
        self._pos_enc = pos_enc
        self._finish = finish
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[int, tuple[list[torch.Tensor], int]] = OrderedDict()
        self._pos: list[torch.Tensor] | None = None
        self._placeholder = torch.zeros(1, 3, 1, 1)

    def get(self, frame_idx: int, default: Any = None) -> tuple[torch.Tensor, dict]:
        found = self._entries.get(frame_idx)
        if found is not None:
            self.hits += 1
            self._entries.move_to_end(frame_idx)
            fpn = found[0]
        else:
            self.misses += 1
            fpn = self._encode(frame_idx)
            size = sum(t.element_size() * t.nelement() for t in fpn)
            if size <= self.max_bytes:
                self._entries[frame_idx] = (fpn, size)
                self.bytes_used += size
                while self.bytes_used > self.max_bytes:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    self.bytes_used -= evicted
        fpn = self._finish(fpn)
        if self._pos is None:
            self._pos = self._pos_enc(fpn)
        return self._placeholder, {"backbone_fpn": fpn, "vision_pos_enc": list(self._pos)}

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0


class VideoTracker:
    """One loaded video model, shared by all sessions (stateless; state is per session).

    precision "fp32" is Meta's exact path; "bf16" runs every step (encoder, memory attention,
    decoder, memory encoder) under bfloat16 autocast, as Meta runs the video predictor on GPU.
    `embed`, when given, replaces the image encoder: an image runtime's `embed` (e.g. the
    OpenVINO bf16 encoder), fed the S x S frame; its features are turned back into the
    backbone outputs the tracker needs (the no-memory embedding it adds is subtracted).
    `parts`, when given, replace other modules of `model` (installed here: the tracker then
    owns `model`), e.g. memory attention and the memory encoder as OpenVINO graphs.
    """

    def __init__(
        self,
        model_id: str,
        model: torch.nn.Module,
        device: torch.device,
        precision: str = "fp32",
        embed: Callable[[np.ndarray], Features] | None = None,
        parts: ModelParts | None = None,
    ) -> None:
        self.model_id = model_id
        self.model = model
        self.device = device
        self.precision = precision
        self.embed = embed
        self.parts = parts
        if parts is not None:
            parts.install(model)
        _float_memories(model)
        _stoppable(model)

    def describe(self) -> dict[str, str]:
        """What runs each part of a propagated frame, for /info."""
        torch_name = f"torch-{self.precision}"
        described = {
            "image_encoder": "image runtime" if self.embed is not None else torch_name,
            "memory_attention": torch_name,
            "memory_encoder": torch_name,
        }
        if self.parts is not None:
            described.update(self.parts.describe())
        return described

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    # -- state -------------------------------------------------------------------------

    def new_state(
        self, frames: FrameReader, height: int, width: int, feature_bytes: int
    ) -> dict[str, Any]:
        """A fresh per-session `inference_state` (upstream's layout, no frames loaded)."""
        device = self.device
        store = FeatureStore(
            lambda i: self._encode(frames, i),
            self._position_encoding,
            feature_bytes,
            self._from_runtime if self.embed is not None else list,
        )
        return {
            "images": None,  # never read: `cached_features` answers every lookup
            "num_frames": len(frames),
            "offload_video_to_cpu": True,
            "offload_state_to_cpu": False,
            "video_height": height,
            "video_width": width,
            "device": device,
            "storage_device": device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": store,
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
            STOP_KEY: threading.Event(),
        }

    @staticmethod
    def stop(state: dict[str, Any]) -> None:
        """Make the step running on `state` (another thread) raise `Stopped` before its next
        per-object model call; until `resume`, every step on it does."""
        state[STOP_KEY].set()

    @staticmethod
    def resume(state: dict[str, Any]) -> None:
        state[STOP_KEY].clear()

    @staticmethod
    def state_bytes(state: dict[str, Any]) -> tuple[int, int]:
        """(feature cache bytes, memory/output bytes) held by a session's state."""
        seen: set[int] = set()
        tracked = _nbytes(
            [state["output_dict_per_obj"], state["temp_output_dict_per_obj"], state["constants"]],
            seen,
        )
        return state["cached_features"].bytes_used, tracked

    # -- model calls -------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def _encode(self, frames: FrameReader, index: int) -> list[torch.Tensor]:
        """Frame -> backbone_fpn, the math of upstream's frame loader + `forward_image`."""
        if self.embed is not None:
            return self._encode_with_runtime(frames.frame(index))
        # uint8 goes to the device, the float math happens there (elementwise IEEE ops: the
        # same values on any device; on a GPU it spares the CPU ~25 MB of float64 per frame)
        rgb = torch.from_numpy(np.array(frames.frame(index))).to(self.device)  # a writable copy
        x = rgb.permute(2, 0, 1).to(torch.float64) / 255.0  # upstream: uint8 / 255.0 (float64)
        x = x.float()
        mean, std = IMG_MEAN.to(self.device), IMG_STD.to(self.device)
        x = ((x - mean) / std).unsqueeze(0)
        with self._autocast():
            out = self.model.forward_image(x)
        return [f.float() for f in out["backbone_fpn"]]

    def _encode_with_runtime(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """The runtime's features as it stores them (bf16 for OpenVINO bf16): cached so."""
        assert self.embed is not None
        features = self.embed(rgb)
        return [*features.high_res, features.image_embed]

    @torch.inference_mode()
    def _from_runtime(self, kept: list[torch.Tensor]) -> list[torch.Tensor]:
        """Kept runtime features -> backbone_fpn: float32, no-memory embedding subtracted."""
        *high_res, embed = (f.float().to(self.device) for f in kept)
        if self.model.directly_add_no_mem_embed:
            embed = embed - self.model.no_mem_embed.reshape(1, -1, 1, 1)
        return [*high_res, embed]

    @torch.inference_mode()
    def _position_encoding(self, fpn: list[torch.Tensor]) -> list[torch.Tensor]:
        pe = self.model.image_encoder.neck.position_encoding
        return [pe(f).to(f.dtype) for f in fpn]

    def add_prompt(
        self,
        state: dict[str, Any],
        frame_index: int,
        object_id: int,
        *,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> FrameMasks:
        """Points (P, 2) px + labels (P,) 1/0 and/or a box (4,) x0 y0 x1 y1 px, or a mask
        (H, W) bool, for one object on one frame; replaces that object's earlier prompts on
        the frame. Returns the frame's masks for all objects."""
        with self._autocast():
            return self._add_prompt(state, frame_index, object_id, points, labels, box, mask)

    def _add_prompt(
        self,
        state: dict[str, Any],
        frame_index: int,
        object_id: int,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask: np.ndarray | None,
    ) -> FrameMasks:
        if mask is not None:
            idx, ids, logits = self.model.add_new_mask(
                state, frame_index, object_id, torch.as_tensor(mask, dtype=torch.bool)
            )
        else:
            idx, ids, logits = self.model.add_new_points_or_box(
                state,
                frame_index,
                object_id,
                points=None if points is None else torch.as_tensor(points).float(),
                labels=None if labels is None else torch.as_tensor(labels).int(),
                box=None if box is None else torch.as_tensor(box).float(),
                normalize_coords=True,
            )
        return self._result(state, idx, ids, logits)

    def propagate(
        self,
        state: dict[str, Any],
        start_frame: int | None,
        max_frames: int | None,
        reverse: bool,
    ) -> Iterator[FrameMasks]:
        """Upstream `propagate_in_video`, one frame per `next()` (run it on a worker thread)."""
        gen = self.model.propagate_in_video(
            state, start_frame_idx=start_frame, max_frame_num_to_track=max_frames, reverse=reverse
        )
        while True:
            with self._autocast():
                item = next(gen, None)
            if item is None:
                return
            idx, ids, logits = item
            yield self._result(state, idx, ids, logits)

    def remove_object(self, state: dict[str, Any], object_id: int) -> None:
        self.model.remove_object(state, object_id, strict=True, need_output=False)

    def reset(self, state: dict[str, Any]) -> None:
        self.model.reset_state(state)

    def object_ids(self, state: dict[str, Any]) -> list[int]:
        return list(state["obj_ids"])

    def prompted_frames(self, state: dict[str, Any]) -> list[int]:
        """Frames where some object has a prompt (propagation starts from the earliest)."""
        frames = set()
        for per_obj in (state["point_inputs_per_obj"], state["mask_inputs_per_obj"]):
            for per_frame in per_obj.values():
                frames.update(per_frame)
        return sorted(frames)

    def _result(
        self, state: dict[str, Any], frame_index: int, ids: list[int], logits: torch.Tensor
    ) -> FrameMasks:
        scores = []
        for obj_idx in range(len(ids)):
            out = None
            for store in (state["temp_output_dict_per_obj"], state["output_dict_per_obj"]):
                per_obj = store.get(obj_idx, {})
                for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                    out = out or per_obj.get(key, {}).get(frame_index)
            score = out["object_score_logits"] if out is not None else None
            scores.append(
                float(torch.sigmoid(score.float()).flatten()[0]) if score is not None else 0.0
            )
        return FrameMasks(
            frame_index=int(frame_index),
            object_ids=[int(i) for i in ids],
            logits=logits[:, 0].float().cpu().numpy(),
            scores=np.asarray(scores, dtype=np.float32),
        )
