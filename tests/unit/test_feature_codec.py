"""The shared tier's value format: exact round trips (dtype, shape, memory layout), views
without copies, and refusal of anything that is not ours for this model and image."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sam2serve.runtime.base import Features
from sam2serve.store import codec
from sam2serve.store.codec import prompt_keys_from_text as _keys_from_text
from sam2serve.store.codec import prompt_keys_to_text as _keys_to_text

IDENT = codec.Identity("sam2.1_hiera_tiny", "ab" * 32, "TorchRuntime-fp32")


def features(dtype: torch.dtype, channels_last: bool) -> Features:
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(1, c, s, s, generator=gen).to(dtype) for c, s in ((8, 4), (2, 16), (4, 8))
    ]
    if channels_last:
        tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
    return Features(tensors[0], tuple(tensors[1:]), orig_hw=(30, 40))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_round_trip_is_exact_with_layout(dtype: torch.dtype, channels_last: bool) -> None:
    f = features(dtype, channels_last)
    value = codec.encode_features(IDENT, "h1", f)
    g = codec.decode_features(value, IDENT, "h1")
    assert g.orig_hw == f.orig_hw
    for a, b in zip((f.image_embed, *f.high_res), (g.image_embed, *g.high_res), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)


def test_decoded_tensors_are_views_of_the_value() -> None:
    value = codec.encode_features(IDENT, "h1", features(torch.float32, True))
    g = codec.decode_features(value, IDENT, "h1")
    assert np.shares_memory(g.high_res[0].numpy(), np.frombuffer(value, np.uint8))


def _reversioned(v: bytes) -> bytes:
    return v[:4] + (max(codec.READABLE) + 1).to_bytes(2, "little") + v[6:]


def _flipped(v: bytes) -> bytes:
    return v[:-1] + bytes([v[-1] ^ 1])


VALUE = codec.encode_features(IDENT, "h1", features(torch.float32, False))
REFUSED = {
    "empty": (b"", IDENT, "h1"),
    "pickle": (pickle.dumps({"image_embed": np.zeros(4)}), IDENT, "h1"),
    "other version": (_reversioned(VALUE), IDENT, "h1"),
    "bit flip": (_flipped(VALUE), IDENT, "h1"),
    "truncated": (VALUE[:-8], IDENT, "h1"),
    "other image": (VALUE, IDENT, "h2"),
    "other model": (VALUE, codec.Identity("sam2_hiera_tiny", "ab" * 32, IDENT.producer), "h1"),
    "other checkpoint": (VALUE, codec.Identity(IDENT.model_id, "cd" * 32, IDENT.producer), "h1"),
    "other runtime": (VALUE, codec.Identity(IDENT.model_id, "ab" * 32, "OpenVinoRuntime"), "h1"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_foreign_values_are_refused(case: str) -> None:
    value, ident, content = REFUSED[case]
    with pytest.raises(codec.CodecError):
        codec.decode_features(value, ident, content)


def test_logits_kind_is_not_features() -> None:
    value = codec.encode("logits", IDENT, "h1", [torch.zeros(2, 8, 8)])
    with pytest.raises(codec.CodecError, match="kind"):
        codec.decode_features(value, IDENT, "h1")


def test_prompt_keys_round_trip_as_text() -> None:
    keys = [
        ((1.5, 2.0, 30.25, 40.0), frozenset({((3.0, 4.0, True), 2), ((5.0, 6.5, False), 1)})),
        (None, frozenset({((7.0, 8.0, True), 1)})),
    ]
    assert _keys_from_text(_keys_to_text(keys)) == keys
