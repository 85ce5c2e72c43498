"""Tensors as raw little-endian bytes plus a JSON-able spec each: the one tensor layout of
every value sam2serve writes (the shared tier's `store.codec`, SAM 3's `Sam3Features`).

A tensor is written in its own memory order (`order`: dimensions from the largest stride
down) so that it reads back with the same strides: SAM 3's necks and SAM 2's high-res
features answer channels-last, and the heads' results depend on the layout in the last bits,
so a dense NCHW copy would not be exact. bfloat16 travels as int16 bits (numpy has no bf16).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),  # numpy has no bf16: carried as int16 bits
}
_NAMES = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a value: dtype, logical shape, memory order; `nbytes` of its data."""

    torch_dtype: torch.dtype
    np_dtype: np.dtype
    shape: tuple[int, ...]
    order: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.np_dtype.itemsize


def write(tensors: Sequence[torch.Tensor]) -> tuple[list[dict[str, Any]], list[np.ndarray], int]:
    """(specs for a JSON header, arrays whose bytes follow in order, CRC32 of those bytes).
    Raises ValueError for a dtype outside `DTYPES`."""
    arrays, specs = [], []
    for t in tensors:
        t = t.detach().cpu()
        name = _NAMES.get(t.dtype)
        if name is None:
            raise ValueError(f"cannot store dtype {t.dtype}")
        order = sorted(range(t.ndim), key=lambda d: -t.stride(d))
        dense = t.permute(order).contiguous()
        arrays.append((dense.view(torch.int16) if t.dtype == torch.bfloat16 else dense).numpy())
        specs.append({"dtype": name, "shape": list(t.shape), "order": order})
    crc = 0
    for a in arrays:
        crc = zlib.crc32(memoryview(a).cast("B"), crc)
    return specs, arrays, crc


def parse(specs: Any) -> list[TensorSpec]:
    """Header specs -> `TensorSpec`s; ValueError on anything malformed (unknown dtype,
    negative sizes, an order that is not a permutation of the dimensions). A spec without
    `order` is dense (values written before orders were recorded)."""
    if not isinstance(specs, list):
        raise ValueError("tensor specs are not a list")
    parsed = []
    for spec in specs:
        try:
            torch_dtype, np_dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            order = tuple(int(d) for d in spec.get("order", range(len(shape))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad tensor spec {spec!r} ({exc})") from exc
        if any(d < 0 for d in shape) or sorted(order) != list(range(len(shape))):
            raise ValueError("tensor shape is negative or its order is not a permutation")
        parsed.append(TensorSpec(torch_dtype, np_dtype, shape, order))
    return parsed


def read(view: memoryview, offset: int, specs: Sequence[TensorSpec]) -> list[torch.Tensor]:
    """The tensors of `specs` laid out from `offset` (sizes checked by the caller), as views
    over `view` with the written strides: read-only by contract, `.clone()` to own them."""
    tensors = []
    for spec in specs:
        count = spec.nbytes // spec.np_dtype.itemsize
        arr = np.frombuffer(view, dtype=spec.np_dtype, count=count, offset=offset)
        dense = torch.from_numpy(arr).view(spec.torch_dtype)
        dense = dense.reshape([spec.shape[d] for d in spec.order])
        tensors.append(dense.permute([spec.order.index(d) for d in range(len(spec.order))]))
        offset += spec.nbytes
    return tensors
