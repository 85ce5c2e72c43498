"""Label Studio's brush RLE: the `rle` list of a `BrushLabels` result (`format: "rle"`).

The format (thi.ng rle-pack, as Label Studio's frontend decodes it): a bit stream of a 32-bit
value count, a 5-bit word size - 1, four 4-bit run-length field sizes - 1, then blocks; each
block is one flag bit (1: a run of one value, 0: literal values), a 2-bit index into the
field sizes, the block length - 1 in that many bits, then the value(s) in word-size bits.
A mask of H x W pixels is H*W*4 values (RGBA, row-major), every channel 0 or 255.

Encoded with the same block choices as `label_studio_sdk.converter.brush.mask2rle`, so the
bytes are identical to theirs (tests/unit/test_label_studio_brush.py checks it against
label-studio-sdk, and Label Studio's decoder reads them back); ours runs on numpy, without
label-studio-sdk's dependency set in the server.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
#: bits of the run-length field, by 2-bit index (Label Studio's choice)
RUN_FIELD_BITS = (3, 4, 8, 16)
_MAX_RUN = 1 << 16


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the runs of equal values in a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1])
    ends = np.append(change, values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths, values[ends]


def encode(values: np.ndarray) -> list[int]:
    """A 1-D uint8 array -> Label Studio RLE bytes (list of ints 0..255)."""
    values = np.asarray(values, dtype=np.uint8).ravel()
    bits = [f"{values.size:032b}", f"{WORD_BITS - 1:05b}"]
    bits += [f"{n - 1:04b}" for n in RUN_FIELD_BITS]
    if values.size:
        lengths, run_values = _runs(values)
        for length, value in zip(lengths.tolist(), run_values.tolist(), strict=True):
            word = f"{value:08b}"
            if length == 1:
                bits.append("0" + "00" + "000" + word)  # one literal value
                continue
            if length <= 8:
                bits.append("1" + "00" + f"{length - 1:03b}" + word)
            elif length <= 16:
                bits.append("1" + "01" + f"{length - 1:04b}" + word)
            elif length <= 256:
                bits.append("1" + "10" + f"{length - 1:08b}" + word)
            else:  # 16-bit field; longer runs in blocks of 2**16 (the rest stays 16-bit)
                while length > _MAX_RUN:
                    bits.append("1" + "11" + f"{_MAX_RUN - 1:016b}" + word)
                    length -= _MAX_RUN
                bits.append("1" + "11" + f"{length - 1:016b}" + word)
    stream = "".join(bits)
    stream += "0" * (8 - len(stream) % 8)  # always pads, as Label Studio's encoder does
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> the `rle` of a BrushLabels result (RGBA, 255 inside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rgba = np.repeat(mask.astype(bool).astype(np.uint8).ravel() * np.uint8(255), 4)
    return encode(rgba)
