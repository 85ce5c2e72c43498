"""SAM 3 features in the shared tier's value format: an exact round trip through the store's
codec (the runtime's own versioned bytes inside), and neither family's value is ever read as
the other's."""

from __future__ import annotations

import pytest
import torch

from sam2serve.runtime.base import Features
from sam2serve.runtime.sam3_types import Sam3Features
from sam2serve.store import codec

SAM3 = codec.Identity("sam3", "ab" * 32, "Sam3Runtime-fp32")
SAM2 = codec.Identity("sam2.1_hiera_tiny", "ab" * 32, "TorchRuntime-fp32")


def sam3_features(with_inst: bool = True, with_first: bool = False) -> Sam3Features:
    gen = torch.Generator().manual_seed(0)
    fpn = tuple(
        torch.randn(1, 8, s, s, generator=gen).contiguous(memory_format=torch.channels_last)
        for s in (16, 8, 4)
    )  # the necks answer channels-last: the layout must survive
    inst = tuple(torch.randn(1, c, s, s, generator=gen) for c, s in ((8, 4), (1, 16), (2, 8)))
    first = torch.randn(1, 16, 8, generator=gen) if with_first else None
    return Sam3Features(
        fpn=fpn, inst=inst if with_inst else None, orig_hw=(30, 40), encoder_first=first
    )


@pytest.mark.parametrize("with_first", [True, False])
@pytest.mark.parametrize("with_inst", [True, False])
def test_sam3_round_trip_is_exact(with_inst: bool, with_first: bool) -> None:
    f = sam3_features(with_inst, with_first)
    g = codec.decode_features(codec.encode_features(SAM3, "h1", f), SAM3, "h1")
    assert isinstance(g, Sam3Features) and g.orig_hw == f.orig_hw and g.nbytes == f.nbytes
    for a, b in zip(f.tensors, g.tensors, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a, b)
    assert (g.inst is None) == (not with_inst)
    assert (g.encoder_first is None) == (not with_first)


def test_a_value_with_the_encoders_first_layer_is_refused_by_a_count_that_lacks_it() -> None:
    """What a server from before `n_first` sees: the counts do not add up (a miss)."""
    f = sam3_features(with_first=True)
    tensors = list(f.tensors)
    old_header = codec.encode(
        "features", SAM3, "h1", tensors, family="sam3", n_fpn=3, n_inst=3, orig_hw=[30, 40]
    )
    with pytest.raises(codec.CodecError, match="add up"):
        codec.decode_features(old_header, SAM3, "h1")


def test_families_never_read_each_others_values() -> None:
    sam3_value = codec.encode_features(SAM3, "h1", sam3_features())
    sam2 = Features(torch.zeros(1, 4, 2, 2), (torch.zeros(1, 2, 8, 8),), orig_hw=(8, 8))
    sam2_value = codec.encode_features(SAM2, "h1", sam2)
    with pytest.raises(codec.CodecError, match="model_id"):
        codec.decode_features(sam3_value, SAM2, "h1")
    with pytest.raises(codec.CodecError, match="model_id"):
        codec.decode_features(sam2_value, SAM3, "h1")


def test_damaged_sam3_values_are_refused() -> None:
    value = codec.encode_features(SAM3, "h1", sam3_features())
    with pytest.raises(codec.CodecError, match="checksum"):
        codec.decode_features(value[:-1] + bytes([value[-1] ^ 1]), SAM3, "h1")
    uncounted = codec.encode("features", SAM3, "h1", [torch.zeros(2)], family="sam3")
    with pytest.raises(codec.CodecError, match="n_fpn"):
        codec.decode_features(uncounted, SAM3, "h1")
    miscounted = codec.encode(
        "features", SAM3, "h1", [torch.zeros(2)], family="sam3", n_fpn=2, n_inst=-1,
        orig_hw=[1, 1],
    )  # fmt: skip
    with pytest.raises(codec.CodecError, match="add up"):
        codec.decode_features(miscounted, SAM3, "h1")
    with pytest.raises(codec.CodecError, match="cannot store"):
        codec.encode_features(SAM3, "h1", object())


def _bf16_valued(t: torch.Tensor) -> torch.Tensor:
    """fp32 holding bf16 values, layout kept: what the fast runtimes' necks hand back."""
    return t.to(torch.bfloat16).float()


@pytest.mark.parametrize(
    ("name", "make", "version", "narrowed"),
    [
        ("exact runtime: nothing narrows", lambda f: f, 1, 0),
        (
            "fast runtime: bf16-valued pyramid, fp32 instance features",
            lambda f: Sam3Features(tuple(_bf16_valued(t) for t in f.fpn), f.inst, f.orig_hw),
            2,
            3,
        ),
        (
            "a NaN stays fp32",
            lambda f: Sam3Features(
                (_bf16_valued(f.fpn[0]).index_fill(1, torch.tensor([0]), float("nan")),),
                None,
                f.orig_hw,
            ),
            1,
            0,
        ),
    ],
)
def test_bf16_valued_tensors_are_stored_narrow_and_read_back_exactly(
    name: str, make, version: int, narrowed: int
) -> None:
    f = make(sam3_features())
    value = codec.encode_features(SAM3, "h1", f)
    assert int.from_bytes(value[4:6], "little") == version
    g = codec.decode_features(value, SAM3, "h1")
    for a, b in zip(f.tensors, g.tensors, strict=True):
        assert b.dtype == torch.float32 and a.stride() == b.stride()
        assert torch.equal(a, b) or (a.isnan().any() and torch.equal(a.isnan(), b.isnan()))
    payload = sum(t.nbytes for t in f.tensors) - sum(t.nbytes // 2 for t in f.tensors[:narrowed])
    assert payload < len(value) < payload + 1024  # + prefix and JSON header


def test_a_narrowed_value_is_refused_by_a_version_1_reader(monkeypatch) -> None:
    f = sam3_features()
    value = codec.encode_features(SAM3, "h1", Sam3Features(
        tuple(_bf16_valued(t) for t in f.fpn), f.inst, f.orig_hw
    ))  # fmt: skip
    monkeypatch.setattr(codec, "READABLE", (codec.VERSION,))
    with pytest.raises(codec.CodecError, match="format version 2"):
        codec.decode_features(value, SAM3, "h1")


@pytest.mark.parametrize(
    ("widen", "match"),
    [([5], "not a stored bf16"), ([1], "not a stored bf16"), (["0"], "indices")],
)
def test_a_bad_widen_list_is_refused(widen, match: str) -> None:
    tensors = [torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)]
    value = codec.encode(
        "features", SAM3, "h1", tensors, widen=widen, family="sam3", n_fpn=2, n_inst=-1,
        orig_hw=[1, 1],
    )  # fmt: skip
    with pytest.raises(codec.CodecError, match=match):
        codec.decode_features(value, SAM3, "h1")
