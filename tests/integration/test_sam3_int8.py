"""SAM 3's int8 CPU path (the ViT trunk's linear layers in int8 on VNNI) against the exact
runtime on the same seeded random weights: within `sam3_int8.TOLERANCE` on the tiny
architecture in the default run, on the real one in the slow pass; the layer itself against
`nn.Linear`; the shared model left untouched; the runtime choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sam2serve.registry import SAM3_REGISTRY, ModelSpec
from sam2serve.runtime import sam3_fast, sam3_int8
from sam2serve.runtime.sam3_fast import Sam3FastRuntime
from sam2serve.runtime.sam3_int8 import (
    TOLERANCE,
    Int8Linear,
    Sam3Int8Fp32Runtime,
    Sam3Int8Runtime,
    int8_available,
    native_int8,
)
from sam2serve.runtime.sam3_runtime import Sam3Runtime, build_sam3_runtime
from sam2serve.testing import CountingAttention, sam3_tiny_spec

CPU = torch.device("cpu")
needs_int8 = pytest.mark.skipif(
    not int8_available(CPU), reason="this CPU has no int8 (VNNI/AMX) units"
)
needs_bf16_int8 = pytest.mark.skipif(
    not (int8_available(CPU) and sam3_fast.native_bf16()),
    reason="this CPU has no native bf16 + int8 (VNNI/AMX) units",
)


def _check_against_exact(
    exact: Sam3Runtime, fast: Sam3Runtime, rgb: np.ndarray, box: list[int]
) -> dict[str, float]:
    """The tolerance's three figures for one image and one concept prompt (phrase + box),
    asserted; masks compared on the exact runtime's top-decile queries (random weights
    score every query in a narrow band)."""
    want, got = exact.trunk(rgb), fast.trunk(rgb)
    assert got.shape == want.shape
    trunk_rel = float((got.float() - want).norm() / want.norm())
    assert 0 < trunk_rel <= TOLERANCE["trunk_rel"]
    hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    fa, fb = exact.expand(want, hw), fast.expand(got, hw)  # = embed, without a second trunk
    for x, y in zip(fa.tensors, fb.tensors, strict=True):
        assert y.dtype == torch.float32 and y.stride() == x.stride()  # same cache format
    [text] = exact.encode_text(["cat"])
    boxes, labels = np.array([box]), np.array([True])
    a = exact.concept(fa, text, boxes, labels)
    b = fast.concept(fb, text, boxes, labels)
    score_abs = float(np.abs(a.scores - b.scores).max())
    assert 0 < score_abs <= TOLERANCE["score_abs"]
    keep = np.flatnonzero(a.scores > np.quantile(a.scores, 0.9))
    ma, mb = exact.masks(fa, a, keep), fast.masks(fb, b, keep)
    assert ma.any(axis=(1, 2)).all()
    iou = (ma & mb).sum(axis=(1, 2)) / (ma | mb).sum(axis=(1, 2))
    assert float(iou.min()) >= TOLERANCE["mask_iou_min"]
    return {"trunk_rel": trunk_rel, "score_abs": score_abs, "mask_iou_min": float(iou.min())}


def _pair(spec: ModelSpec, checkpoint: Path) -> tuple[Sam3Runtime, Sam3Runtime]:
    """The exact runtime and the int8 one `auto` picks on this CPU, sharing the weights."""
    exact = build_sam3_runtime(spec, checkpoint, CPU)
    int8 = Sam3Int8Runtime if sam3_fast.native_bf16() else Sam3Int8Fp32Runtime
    return exact, int8(spec.model_id, exact.model, CPU)


@pytest.fixture(scope="module")
def tiny_pair(sam3_tiny_weights_dir: Path) -> tuple[Sam3Runtime, Sam3Runtime]:
    spec = sam3_tiny_spec()
    return _pair(spec, sam3_tiny_weights_dir / spec.filename)


@needs_bf16_int8
@pytest.mark.parametrize("route_all", [False, True], ids=["as-shipped", "all-attention-bf16"])
def test_int8_path_within_tolerance(tiny_pair, photo_set, monkeypatch, route_all) -> None:
    """`route_all`: every attention on the bf16 kernel (the tiny config's sequences are too
    short for it as shipped; the real config's are not)."""
    exact, fast = tiny_pair
    kernel = CountingAttention()
    if route_all:
        monkeypatch.setattr(fast, "attention", kernel)
    _check_against_exact(exact, fast, photo_set["chelsea"], [50, 40, 300, 250])
    assert (kernel.calls > 0) is route_all


@needs_int8
def test_int8_fp32_path_within_tolerance(tiny_pair, photo_set) -> None:
    """The int8 trunk with fp32 around it (CPUs with VNNI and no native bf16): the same
    tolerance; no bf16 anywhere in what it hands back."""
    exact, _ = tiny_pair
    fp32 = Sam3Int8Fp32Runtime(exact.model_id, exact.model, CPU)
    assert fp32.trunk(photo_set["chelsea"]).dtype == torch.float32
    assert len([m for m in fp32._trunk.modules() if isinstance(m, Int8Linear)]) > 0
    assert all(
        m.out_dtype == torch.float32 for m in fp32._trunk.modules() if isinstance(m, Int8Linear)
    )
    _check_against_exact(exact, fp32, photo_set["chelsea"], [50, 40, 300, 250])


@needs_int8
def test_int8_fp32_path_defers_the_segmentation_head_in_fp32(tiny_pair, photo_set) -> None:
    """On the same features, the deferred head gives the kept queries the mask logits that
    Meta's whole head gives them (fp32 both: equal within float rounding), computes its
    pixel embedding once, and charges its fp32 size from the start."""
    exact, _ = tiny_pair
    fp32 = Sam3Int8Fp32Runtime(exact.model_id, exact.model, CPU)
    features = fp32.embed(photo_set["chelsea"])
    [text] = fp32.encode_text(["cat"])
    boxes, labels = np.array([[50, 40, 300, 250]]), np.array([True])
    whole = exact.concept(features, text, boxes, labels)
    deferred = fp32.concept(features, text, boxes, labels)
    assert deferred.mask_logits is None and whole.mask_logits is not None
    np.testing.assert_array_equal(deferred.scores, whole.scores)
    charged = deferred.nbytes
    idx = torch.as_tensor(np.argsort(whole.scores)[-3:])
    low = deferred.low_res(idx)
    assert low.dtype == torch.float32 and low.shape == whole.mask_logits[idx].shape
    torch.testing.assert_close(low, whole.mask_logits[idx], rtol=1e-4, atol=1e-4)
    later = deferred.segment_later
    assert later._embeds is not None and later._embeds.dtype == torch.float32
    assert deferred.nbytes == charged
    embeds = later._embeds
    torch.testing.assert_close(deferred.low_res(idx[:1]), low[:1], rtol=1e-5, atol=1e-5)
    assert later._embeds is embeds  # the pixel embedding is computed once


@pytest.mark.parametrize(
    ("bf16", "int8", "expected"),
    [
        (True, True, "Sam3Int8Runtime"),
        (False, True, "Sam3Int8Fp32Runtime"),
        (True, False, "Sam3FastRuntime"),
        (False, False, "Sam3Runtime"),
    ],
)
def test_auto_picks_the_sam3_runtime_by_cpu_kind(
    sam3_tiny_weights_dir: Path, monkeypatch, bf16, int8, expected
) -> None:
    from sam2serve.config import Settings
    from sam2serve.runtime.factory import sam3_factory

    monkeypatch.setattr(sam3_fast, "native_bf16", lambda: bf16)
    monkeypatch.setattr(sam3_int8, "native_bf16", lambda: bf16)
    monkeypatch.setattr(sam3_int8, "native_int8", lambda: int8)
    monkeypatch.setattr(sam3_fast, "Bf16Attention", lambda *a, **k: None)  # no compile
    spec = sam3_tiny_spec()
    built = sam3_factory(Settings(runtime="auto"))(spec, sam3_tiny_weights_dir / spec.filename, CPU)
    assert type(built).__name__ == expected


@needs_bf16_int8
def test_int8_path_is_int8_and_leaves_the_model_alone(tiny_pair, photo_set) -> None:
    exact, fast = tiny_pair
    trunk = exact.model.backbone.vision_backbone.trunk
    int8_layers = [m for m in fast._trunk.modules() if isinstance(m, Int8Linear)]
    assert len(int8_layers) == 4 * len(trunk.blocks)
    assert not any(isinstance(m, Int8Linear) for m in exact.model.modules())
    for block in trunk.blocks:
        assert isinstance(block.mlp.fc1, nn.Linear) and isinstance(block.mlp.act, nn.GELU)
    # everything but the quantized layers is shared, not copied
    assert fast._trunk.patch_embed is trunk.patch_embed
    assert fast._trunk.blocks[0].norm1 is trunk.blocks[0].norm1
    rgb = photo_set["chelsea"]
    bf16 = Sam3FastRuntime(exact.model_id, exact.model, CPU)
    assert not torch.equal(fast.trunk(rgb), bf16.trunk(rgb))  # really another path
    assert torch.equal(exact.trunk(rgb), build_sam3_runtime_again(exact).trunk(rgb))


def build_sam3_runtime_again(exact: Sam3Runtime) -> Sam3Runtime:
    """A second exact runtime on the same module objects (equal output = nothing mutated)."""
    return Sam3Runtime(exact.model_id, exact.model, CPU)


@needs_int8
@pytest.mark.parametrize(
    ("in_features", "out_features", "gelu", "out_dtype"),
    [
        (64, 192, False, torch.bfloat16),
        (64, 296, True, torch.float32),
        (296, 64, False, torch.bfloat16),
    ],
)
def test_int8_linear_matches_linear(in_features, out_features, gelu, out_dtype) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    layer = Int8Linear(linear, gelu=gelu, out_dtype=out_dtype)
    x = torch.randn(2, 7, 5, in_features)
    with torch.inference_mode():
        want = linear(x)
        if gelu:
            want = nn.functional.gelu(want)
        got = layer(x)
        assert got.shape == want.shape and got.dtype == out_dtype
        assert float((got.float() - want).norm() / want.norm()) < 2e-2
        # zero is always on the activation grid: a zero input gives the bias exactly (bf16)
        zero = layer(torch.zeros(3, in_features)).float()
        bias = linear.bias if not gelu else nn.functional.gelu(linear.bias)
        torch.testing.assert_close(zero, bias.to(out_dtype).float().expand(3, -1))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512_bf16", "avx512_vnni"}, True),
        ({"avx2", "avx_vnni"}, True),
        ({"amx_int8", "amx_bf16"}, True),
        ({"avx2", "avx512f", "avx512_bf16"}, False),
        (set(), False),
    ],
)
def test_native_int8_needs_dot_product_units(monkeypatch, flags, expected) -> None:
    monkeypatch.setattr(sam3_int8, "cpu_flags", lambda: frozenset(flags))
    assert native_int8() is expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, True),  # Zen 4, Cooper Lake
        ({"avx2", "avx512f", "amx_bf16", "amx_int8"}, True),  # Sapphire Rapids
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, False),  # Ice Lake: emulated bf16
        ({"avx2", "avx_vnni"}, False),
        (set(), False),
    ],
)
def test_native_bf16_needs_bf16_units_not_just_onednn(monkeypatch, flags, expected) -> None:
    """oneDNN says yes on any AVX512BW CPU; the runtime choice must not believe it alone."""
    monkeypatch.setattr(sam3_fast, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert sam3_fast.native_bf16() is expected


_BF16 = sam3_fast.native_bf16()
_INT8 = ("Sam3Int8Runtime" if _BF16 else "Sam3Int8Fp32Runtime") if int8_available(CPU) else None
_BF16_OR_EXACT = "Sam3FastRuntime" if _BF16 else "Sam3Runtime"


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("torch", "Sam3Runtime"),
        ("openvino-f32", "Sam3Runtime"),  # pinned f32: no reduced precision for SAM 3 either
        ("openvino-bf16", _BF16_OR_EXACT),
        ("auto", _INT8 or _BF16_OR_EXACT),
        ("openvino-int8", _INT8 or _BF16_OR_EXACT),
    ],
)
def test_settings_pick_the_int8_runtime(sam3_tiny_weights_dir: Path, runtime, expected) -> None:
    """On this machine's CPU, as it is (`test_auto_picks_the_sam3_runtime_by_cpu_kind`
    covers the other kinds)."""
    from sam2serve.config import Settings
    from sam2serve.runtime.factory import sam3_factory

    spec = sam3_tiny_spec()
    built = sam3_factory(Settings(runtime=runtime))(
        spec, sam3_tiny_weights_dir / spec.filename, CPU
    )
    assert type(built).__name__ == expected


@needs_int8
@pytest.mark.slow
def test_int8_path_within_tolerance_real(sam3_real_weights_dir: Path, photo_set) -> None:
    """The real architecture (32 blocks of 1024 wide: the error compounds over depth), one
    trunk per side: ~2 min on 2 cores, one model in memory (~5 GB)."""
    spec = SAM3_REGISTRY["sam3"]
    exact, fast = _pair(spec, sam3_real_weights_dir / spec.filename)
    _check_against_exact(exact, fast, photo_set["coffee"], [200, 100, 400, 300])


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (2, 5, 64)])
@pytest.mark.parametrize("inference", [False, True])
def test_quantized_input_is_read_in_place(shape, inference) -> None:
    """The int8 linear's input quantization hands oneDNN the quint8 tensor's own bytes
    (no `int_repr` copy): the same values, shape and dtype, also in inference mode."""
    x = torch.randn(*shape) * 3
    with torch.inference_mode(inference):
        q, scale, zero = sam3_int8._quantize_uint8(x)
        want = torch.quantize_per_tensor(x, scale, zero, torch.quint8)
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert torch.equal(q, want.int_repr())
    assert scale > 0 and 0 <= zero <= 255
