"""SAM 3's runtime seam: the values that cross it (no `sam3` import here).

`Sam3Features` is one image through SAM 3's vision backbone (everything the concept heads and
the instance-interactive predictor need, no text); `TextEmbedding` is one phrase through the
text encoder; `ConceptOutput` is the detector's pre-threshold answer for one prompt.
The runtime itself (`sam3_runtime.Sam3Runtime`) is stateless: callers own these values and
may cache them (features per image, text embeddings per phrase).
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sam2serve.runtime import tensor_bytes

#: Version prefix of `Sam3Features.to_bytes` values; anything else is refused on read.
FEATURES_MAGIC = b"S3FT"
FEATURES_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_MAX_HEADER = 64 * 1024


def _nbytes(tensors: tuple[torch.Tensor, ...]) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors)


@dataclass(frozen=True)
class Sam3Features:
    """One image's SAM 3 backbone output (CPU or the runtime's device, read-only by contract).

    fpn: the detector's feature pyramid, strides 4, 2, 1 of the backbone grid s:
        (1, D, 4s, 4s), (1, D, 2s, 2s), (1, D, s, s); D = 256, s = 72 on the real config
        (1008 px input, patch 14). All three feed the pixel decoder; the last one also the
        concept encoder. Positional encodings are not kept: they depend only on the shapes.
    inst: the instance-interactive (SAM 2 style) predictor's features, as its `predict`
        reads them after `set_image`: (image_embed (1, D, s, s) with no_mem_embed added,
        high_res_0 (1, D/8, 4s, 4s), high_res_1 (1, D/4, 2s, 2s)); None when the model was
        built without instance interactivity.
    orig_hw: the original image's (height, width) in pixels.
    encoder_first: the concept encoder's layer 0 after its self-attention, (1, s*s, D)
        fp32 (`sam3_encoder`: it reads the image alone, so each prompt skips it); None
        where not computed (then each prompt computes it).

    Size on the real config, fp32: fpn 111.5 MB (106.3 MiB) + inst 21.2 MB (20.3 MiB)
    + encoder_first 5.3 MB = 138.0 MB per image (`nbytes`); `Sam3Runtime.pack` stores the
    same image in 21.2 MB.
    """

    fpn: tuple[torch.Tensor, ...]
    inst: tuple[torch.Tensor, ...] | None
    orig_hw: tuple[int, int]
    encoder_first: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors (what a byte-budgeted cache should charge)."""
        return _nbytes(self.tensors)

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """fpn, inst, then encoder_first, in order (what `to_bytes` writes)."""
        first = () if self.encoder_first is None else (self.encoder_first,)
        return (*self.fpn, *(self.inst or ()), *first)

    @classmethod
    def from_tensors(
        cls,
        tensors: list[torch.Tensor],
        n_fpn: int,
        n_inst: int,
        n_first: int,
        orig_hw: tuple[int, int],
    ) -> Sam3Features:
        """`tensors` in `tensors`' order, split by the counts (n_inst -1: no inst; n_first 0
        or 1); ValueError when the counts do not add up."""
        if n_fpn < 1 or n_inst < -1 or n_first not in (0, 1):
            raise ValueError("tensor counts out of range")
        if n_fpn + max(n_inst, 0) + n_first != len(tensors):
            raise ValueError("tensor counts do not add up")
        end = n_fpn + max(n_inst, 0)
        return cls(
            fpn=tuple(tensors[:n_fpn]),
            inst=None if n_inst < 0 else tuple(tensors[n_fpn:end]),
            orig_hw=orig_hw,
            encoder_first=tensors[end] if n_first else None,
        )

    def to_bytes(self) -> bytes:
        """A self-contained, versioned value (exact: the tensors' own dtype, bytes as is).

        Layout: b"S3FT" | u16 version | u32 header length | JSON header | tensor bytes; the
        header gives orig_hw, how many tensors are fpn / inst, each dtype, shape and memory
        order (strides are restored on read: the heads' last bits depend on them), and a
        CRC32 of the tensor bytes. ~133 MB on the real config; `Sam3Runtime.pack` is the
        compact (21 MB) form for a shared tier.
        """
        specs, arrays, crc = tensor_bytes.write(self.tensors)
        header = json.dumps(
            {
                "orig_hw": list(self.orig_hw),
                "n_fpn": len(self.fpn),
                "n_inst": -1 if self.inst is None else len(self.inst),
                "n_first": 0 if self.encoder_first is None else 1,
                "tensors": specs,
                "crc32": crc,
            }
        ).encode()
        parts = [_PREFIX.pack(FEATURES_MAGIC, FEATURES_VERSION, len(header)), header]
        parts.extend(a.tobytes() for a in arrays)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> Sam3Features:
        """The inverse of `to_bytes`; raises ValueError on anything else (junk, truncation,
        another version, a bad checksum). Tensors are copies (writable, owned)."""
        view = memoryview(data)
        if len(view) < _PREFIX.size:
            raise ValueError("not a SAM 3 features value: too short")
        magic, version, hlen = _PREFIX.unpack_from(view)
        if magic != FEATURES_MAGIC or version != FEATURES_VERSION:
            raise ValueError(f"not a SAM 3 features value (magic {magic!r}, version {version})")
        if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(view):
            raise ValueError("SAM 3 features value: bad header length")
        try:
            header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + hlen]))
            specs = header["tensors"]
            n_fpn, n_inst = int(header["n_fpn"]), int(header["n_inst"])
            n_first = int(header.get("n_first", 0))
            orig_hw = (int(header["orig_hw"][0]), int(header["orig_hw"][1]))
            crc_expected = int(header["crc32"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"SAM 3 features value: bad header ({exc})") from exc
        if n_fpn < 1 or n_inst < -1 or n_first not in (0, 1):
            raise ValueError("SAM 3 features value: tensor counts out of range")
        if n_fpn + max(n_inst, 0) + n_first != len(specs):
            raise ValueError("SAM 3 features value: tensor counts do not add up")
        try:
            parsed = tensor_bytes.parse(specs)
        except ValueError as exc:
            raise ValueError(f"SAM 3 features value: {exc}") from exc
        offset = _PREFIX.size + hlen
        size = sum(spec.nbytes for spec in parsed)
        if offset + size > len(view):
            raise ValueError("SAM 3 features value: truncated")
        if offset + size != len(view):
            raise ValueError("SAM 3 features value: trailing bytes")
        if zlib.crc32(view[offset:]) != crc_expected:
            raise ValueError("SAM 3 features value: checksum mismatch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only buffer: cloned below
            tensors = [t.clone() for t in tensor_bytes.read(view, offset, parsed)]
        return cls.from_tensors(tensors, n_fpn, n_inst, n_first, orig_hw)


@dataclass(frozen=True)
class TextEmbedding:
    """One phrase through SAM 3's text encoder (what `Sam3Processor.set_text_prompt` adds to
    its state): features (L, 1, D) float32 after the resizer, mask (1, L) bool (True = padding),
    L = the tokenizer's context length (32), D = 256. Cache it per (model, phrase)."""

    phrase: str
    features: torch.Tensor
    mask: torch.Tensor

    @property
    def nbytes(self) -> int:
        return _nbytes((self.features, self.mask))


@dataclass(frozen=True)
class ConceptOutput:
    """The detector's answer for one prompt, before any threshold: all Q queries
    (Q = 200 on the real config), in query order.

    mask_logits: (Q, h, w) float32 low-res mask logits (h = w = 4s: 288 on the real config);
        None where the runtime defers the segmentation head (`segment_later`): read masks
        through `low_res`, which works either way
    boxes_xyxy: (Q, 4) float32 boxes in absolute pixels of the original image
    scores: (Q,) float32 sigmoid(logit) * presence, exactly as `Sam3Processor` computes them
    logits: (Q,) float32 the raw class logits (pre-sigmoid, pre-presence)
    presence: sigmoid of the presence logit: how sure the model is the concept is present
    """

    mask_logits: torch.Tensor | None
    boxes_xyxy: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    presence: float
    #: (K,) query indices -> (K, h, w) float32 mask logits, running the segmentation head
    #: on first use (the fast runtime: most phrases keep few queries, many none)
    segment_later: Callable[[torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def nbytes(self) -> int:
        """Bytes this output holds beyond the image's features: the arrays, the mask logits
        (exact runtime: (Q, 4s, 4s) fp32, 66.4 MB on the real config) or what `segment_later`
        keeps (the fast runtime: its `nbytes`, ~48 MB on the real config)."""
        arrays = self.boxes_xyxy.nbytes + self.scores.nbytes + self.logits.nbytes
        masks = 0 if self.mask_logits is None else _nbytes((self.mask_logits,))
        # a deferred head that cannot say what it holds is charged nothing (none ships)
        later = int(getattr(self.segment_later, "nbytes", 0))
        return int(arrays) + masks + later

    def low_res(self, idx: torch.Tensor) -> torch.Tensor:
        """(K, h, w) float32 low-res mask logits of the queries `idx` ((K,) int64)."""
        if self.mask_logits is not None:
            return self.mask_logits[idx]
        if self.segment_later is None:
            raise ValueError("ConceptOutput has neither mask_logits nor segment_later")
        return self.segment_later(idx)
