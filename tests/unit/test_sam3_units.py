"""SAM 3's runtime pieces that need no model: the features value format, sizes, box
conversion, the scoped "cuda" mapping, the registry's SAM 3 ids, and gated weights."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from sam2serve.errors import BadRequest
from sam2serve.registry import REGISTRY, SAM3_REGISTRY, Models, all_specs
from sam2serve.runtime.sam3_build import BPE_SHA256, REAL, TINY, bpe_path
from sam2serve.runtime.sam3_device import on_device
from sam2serve.runtime.sam3_runtime import boxes_to_prompt
from sam2serve.runtime.sam3_types import Sam3Features
from sam2serve.runtime.weights import WeightsError, download, ensure_checkpoint


def _features(
    inst: bool = True, dtype: torch.dtype = torch.float32, first: bool = True
) -> Sam3Features:
    """Like the necks' outputs: channels-last memory (strides (HWC, 1, WC, C))."""
    gen = torch.Generator().manual_seed(0)

    def nhwc(shape: tuple[int, int, int, int]) -> torch.Tensor:
        b, c, h, w = shape
        return torch.randn((b, h, w, c), generator=gen).to(dtype).permute(0, 3, 1, 2)

    fpn = tuple(nhwc(s) for s in TINY.fpn_shapes())
    inst_t = tuple(nhwc(s) for s in TINY.inst_shapes())
    encoder_first = torch.randn(TINY.first_shape(), generator=gen).to(dtype) if first else None
    return Sam3Features(
        fpn=fpn, inst=inst_t if inst else None, orig_hw=(200, 300), encoder_first=encoder_first
    )


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("inst", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_features_round_trip(inst: bool, dtype: torch.dtype, first: bool) -> None:
    features = _features(inst, dtype, first)
    back = Sam3Features.from_bytes(features.to_bytes())
    assert back.orig_hw == features.orig_hw
    assert (back.inst is None) == (features.inst is None)
    assert (back.encoder_first is None) == (features.encoder_first is None)
    assert len(back.tensors) == len(features.tensors)
    for ours, theirs in zip(back.tensors, features.tensors, strict=True):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
        assert ours.stride() == theirs.stride()  # the memory layout comes back too
    assert back.nbytes == features.nbytes


def _corrupt(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: b"",
        lambda d: b"junk" * 10,
        lambda d: d[:-1],  # truncated
        lambda d: d + b"\0",  # trailing bytes
        lambda d: _corrupt(d, len(d) - 5),  # a flipped tensor byte: checksum
        lambda d: _corrupt(d, 0),  # magic
        lambda d: _corrupt(d, 4),  # version
        lambda d: _corrupt(d, 12),  # header JSON
        lambda d: b"S2SF" + d[4:],  # a SAM 2 value is not a SAM 3 one
    ],
)
def test_features_refuse_anything_else(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        Sam3Features.from_bytes(mangle(_features().to_bytes()))


def test_feature_sizes_are_stated() -> None:
    """~138 MB per image on the real config in fp32 (fpn 111.5 MB + instance 21.2 MB +
    the encoder's first layer 5.3 MB): the number docs and the cache budget quote."""
    assert REAL.grid == 72 and REAL.fpn_shapes()[0] == (1, 256, 288, 288)
    assert REAL.feature_nbytes() == 4 * (256 * 22 + 256 + 32 * 16 + 64 * 4) * 72 * 72
    assert REAL.feature_nbytes() == 138_018_816
    assert _features().nbytes == TINY.feature_nbytes()


def test_boxes_to_prompt_is_normalized_cxcywh() -> None:
    out = boxes_to_prompt(np.array([[10, 20, 110, 60]]), (200, 400))
    assert out == [[60 / 400, 40 / 200, 100 / 400, 40 / 200]]
    assert boxes_to_prompt(np.zeros((0, 4)), (10, 10)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the mapping where CUDA is absent")
def test_cuda_means_the_device_only_inside_the_block() -> None:
    cpu = torch.device("cpu")
    with on_device(cpu):
        t = torch.zeros(2, device="cuda")
        assert t.device == cpu
        assert torch.arange(3, device=torch.device("cuda")).device == cpu
        assert t.pin_memory() is t
        assert t.cuda().device == cpu
        assert torch.ones(1).to("cuda").device == cpu
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device="cuda")


def test_bpe_vocabulary_comes_from_open_clip_checksummed() -> None:
    import hashlib

    path = bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BPE_SHA256


@pytest.mark.parametrize("requested", [None, "sam3", "sam3/sam3_final", "sam3_final", " sam3 "])
def test_sam3_ids_resolve(requested: str | None) -> None:
    models = Models(REGISTRY, "sam2.1_hiera_tiny")
    assert models.resolve_sam3(requested) is SAM3_REGISTRY["sam3"]


def test_families_never_answer_for_each_other() -> None:
    models = Models({**REGISTRY, **SAM3_REGISTRY}, "sam2.1_hiera_tiny")
    with pytest.raises(BadRequest) as sam2_as_sam3:
        models.resolve_sam3("hiera_tiny")
    assert sam2_as_sam3.value.field == "model_id" and "sam3/sam3_final" in str(sam2_as_sam3.value)
    with pytest.raises(BadRequest) as sam3_as_sam2:
        models.resolve("sam3")
    assert sam3_as_sam2.value.field == "sam2_version_id"
    assert "sam3" in all_specs() and "sam2.1_hiera_tiny" in all_specs()


def test_sam3_weights_are_never_downloaded(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a gated checkpoint must not be fetched")

    monkeypatch.setattr(httpx, "stream", no_network)
    spec = SAM3_REGISTRY["sam3"]
    for call in (
        lambda: ensure_checkpoint(spec, tmp_path, allow_download=True),
        lambda: download(spec, tmp_path),
    ):
        with pytest.raises(WeightsError) as err:
            call()
        message = str(err.value)
        assert err.value.status == 503
        for part in ("sam3.pt", str(tmp_path), "https://huggingface.co/facebook/sam3", "gated"):
            assert part in message
    assert not any(tmp_path.iterdir())
