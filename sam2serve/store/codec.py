"""A typed binary format for embeddings and logits kept in the shared (Redis) tier.

Never pickle: a value is a small fixed prefix, a JSON header and raw little-endian tensor
bytes, so a value written by anything else (another deployment, another version, a
pickle, random bytes) is refused with `CodecError` instead of being executed or misread.

Layout::

    b"S2SF" | u16 format version | u32 header length | header (UTF-8 JSON) | tensor bytes

The header names what the bytes are (`kind`: "features" | "logits"), the model id, the
checkpoint sha256 and the producing runtime, the image content hash, and for each tensor
its dtype (float32 | float16 | bfloat16) and shape; a CRC32 covers the tensor bytes.
Decoding does not copy the tensor bytes: tensors are views over the received buffer
(numpy `frombuffer` -> `torch.from_numpy`), read-only by contract.

Version 2 (SAM 3 features only): fp32 tensors whose every value is a bf16 are stored as
bf16 (header `widen`: their indices) and widened back on read, bit for bit. SAM 3's fast
runtimes run the necks in bf16 and hand back fp32 features: 138.0 MB per image becomes
~74 MB in the tier. Servers that read only version 1 refuse such a value (a miss) rather
than misread it; this one reads both. A SAM 3 header's `n_first` (1, or absent: 0) says
the concept encoder's first layer follows the other tensors; a server from before it finds
the counts do not add up and refuses the value (a miss), and values without it still read.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sam2serve.runtime import tensor_bytes
from sam2serve.runtime.base import Features
from sam2serve.store.logits import PromptKey

MAGIC = b"S2SF"
VERSION = 1
VERSION_NARROWED = 2  # some tensors stored as bf16, widened on read (module docs)
READABLE = (VERSION, VERSION_NARROWED)
_PREFIX = struct.Struct("<4sHI")
_MAX_HEADER = 64 * 1024


class CodecError(ValueError):
    """The bytes are not a value this version of sam2serve wrote for this model."""


@dataclass(frozen=True)
class Identity:
    """What a value must match to be used: model, exact checkpoint and producing runtime."""

    model_id: str
    checkpoint_sha256: str
    producer: str  # runtime class + precision: features of different runtimes differ


def encode(
    kind: str, identity: Identity, content_hash: str, tensors: list[torch.Tensor], **extra: object
) -> bytes:
    """One value: prefix + header + the tensors' bytes (`runtime.tensor_bytes`), in order."""
    try:
        specs, arrays, crc = tensor_bytes.write(tensors)
    except ValueError as exc:
        raise CodecError(str(exc)) from exc
    header = {
        "kind": kind,
        "model_id": identity.model_id,
        "checkpoint_sha256": identity.checkpoint_sha256,
        "producer": identity.producer,
        "content_hash": content_hash,
        "tensors": specs,
        "crc32": crc,
        **extra,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    version = VERSION_NARROWED if header.get("widen") else VERSION
    parts = [_PREFIX.pack(MAGIC, version, len(head)), head]
    parts += [memoryview(a).cast("B") for a in arrays]
    return b"".join(parts)  # the one copy: Redis takes a single value buffer


def decode(
    value: bytes | memoryview,
    kind: str,
    identity: Identity,
    content_hash: str | None,
    device: torch.device | None = None,
) -> tuple[list[torch.Tensor], dict]:
    """Tensors (views over `value`, moved to `device` if given) and the header.

    Raises CodecError when the value is not ours, is another version, or names another
    model, checkpoint, runtime, kind or image than the caller expects.
    """
    view = memoryview(value)
    if len(view) < _PREFIX.size:
        raise CodecError("value too short")
    magic, version, head_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CodecError("not a sam2serve value (bad magic; a pickle or foreign data?)")
    if version not in READABLE:
        raise CodecError(f"format version {version}, this server reads {READABLE}")
    if head_len > _MAX_HEADER or _PREFIX.size + head_len > len(view):
        raise CodecError("header length out of range")
    try:
        header = json.loads(bytes(view[_PREFIX.size : _PREFIX.size + head_len]))
        specs = tensor_bytes.parse(header["tensors"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"unreadable header: {exc}") from exc
    expected = {
        "kind": kind,
        "model_id": identity.model_id,
        "checkpoint_sha256": identity.checkpoint_sha256,
        "producer": identity.producer,
    }
    if content_hash is not None:
        expected["content_hash"] = content_hash
    for field, want in expected.items():
        if header.get(field) != want:
            raise CodecError(f"{field} is {header.get(field)!r}, expected {want!r}")
    offset = _PREFIX.size + head_len
    if offset + sum(spec.nbytes for spec in specs) != len(view):
        raise CodecError("tensor bytes do not match the header's shapes")
    crc = zlib.crc32(view[offset:])
    if crc != header.get("crc32"):
        raise CodecError("checksum mismatch (corrupt value)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: never written to
        tensors = tensor_bytes.read(view, offset, specs)
    tensors = _widened(tensors, header.get("widen") if version == VERSION_NARROWED else None)
    if device is not None and device.type != "cpu":
        tensors = [t.to(device) for t in tensors]
    return tensors, header


def encode_features(identity: Identity, content_hash: str, features: Any) -> bytes:
    """A features value of either family: SAM 2's `Features`, or SAM 3's `Sam3Features`
    (family "sam3" in the header; fpn, inst, then the encoder's first layer when held).
    Memory layouts are kept (SAM 3's necks answer channels-last: a dense copy would change
    the heads' output in the last bit), so a value decodes to features that give
    bit-identical answers."""
    if not isinstance(features, Features):
        fpn, inst = getattr(features, "fpn", None), getattr(features, "inst", None)
        if fpn is None:
            raise CodecError(f"cannot store features of type {type(features).__name__}")
        first = getattr(features, "encoder_first", None)
        tensors, widen = _narrowed(list(features.tensors))
        return encode(
            "features",
            identity,
            content_hash,
            tensors,
            widen=widen,
            orig_hw=list(features.orig_hw),
            family="sam3",
            n_fpn=len(fpn),
            n_inst=-1 if inst is None else len(inst),
            n_first=0 if first is None else 1,
        )
    tensors = [features.image_embed, *features.high_res]
    return encode("features", identity, content_hash, tensors, orig_hw=list(features.orig_hw))


def _narrowed(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """The tensors with each fp32 one whose every value is a bf16 as bf16 (layout kept), and
    those ones' indices."""
    out, widen = [], []
    for i, t in enumerate(tensors):
        if t.dtype == torch.float32:
            narrow = t.to(torch.bfloat16)  # layout kept (preserve_format)
            if torch.equal(narrow.float(), t):  # NaN compares unequal: such a tensor stays
                out.append(narrow)
                widen.append(i)
                continue
        out.append(t)
    return out, widen


def _widened(tensors: list[torch.Tensor], widen: Any) -> list[torch.Tensor]:
    """`_narrowed` undone: the listed bf16 tensors back to fp32 (copies, layout kept)."""
    if not widen:
        return tensors
    if not isinstance(widen, list) or not all(isinstance(i, int) for i in widen):
        raise CodecError("unreadable header: widen must list tensor indices")
    out = list(tensors)
    for i in widen:
        if not 0 <= i < len(out) or out[i].dtype != torch.bfloat16:
            raise CodecError(f"widen names tensor {i}, which is not a stored bf16 tensor")
        out[i] = out[i].float()
    return out


def decode_features(
    value: bytes, identity: Identity, content_hash: str, device: torch.device | None = None
) -> Any:
    """`Features` (SAM 2) or `Sam3Features` (header family "sam3"), as the value says; the
    identity check (model, checkpoint, producing runtime) keeps the families apart."""
    tensors, header = decode(value, "features", identity, content_hash, device)
    if header.get("family", "sam2") == "sam3":
        return _sam3_features(tensors, header)
    try:
        h, w = (int(v) for v in header["orig_hw"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError("features header lacks orig_hw") from exc
    if len(tensors) < 1:
        raise CodecError("features value holds no tensors")
    return Features(image_embed=tensors[0], high_res=tuple(tensors[1:]), orig_hw=(h, w))


def _sam3_features(tensors: list[torch.Tensor], header: dict) -> Any:
    from sam2serve.runtime.sam3_types import Sam3Features

    try:
        n_fpn, n_inst = int(header["n_fpn"]), int(header["n_inst"])
        n_first = int(header.get("n_first", 0))  # absent before the encoder's first layer
        h, w = (int(v) for v in header["orig_hw"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError("SAM 3 features header lacks n_fpn / n_inst / orig_hw") from exc
    try:
        return Sam3Features.from_tensors(tensors, n_fpn, n_inst, n_first, (h, w))
    except ValueError as exc:
        raise CodecError(f"SAM 3 features: {exc}") from exc


def prompt_keys_to_text(keys: Sequence[PromptKey]) -> str:
    """A prompt set as compact JSON text: the field name of its saved logits."""
    rows = [
        [list(box) if box is not None else None, sorted([*p, n] for p, n in points)]
        for box, points in keys
    ]
    return json.dumps(rows, separators=(",", ":"))


def prompt_keys_from_text(text: bytes | str) -> list[PromptKey]:
    """The prompt set of a saved-logits field (ValueError/TypeError when malformed)."""
    rows = json.loads(text)
    keys: list[PromptKey] = []
    for box, points in rows:
        box_t = tuple(float(v) for v in box) if box is not None else None
        if box_t is not None and len(box_t) != 4:
            raise ValueError("box needs 4 numbers")
        pts = frozenset(((float(x), float(y), bool(pos)), int(n)) for x, y, pos, n in points)
        keys.append((box_t, pts))  # type: ignore[arg-type]
    return keys
