"""SAM 3's fast CPU path (bf16 autocast) against the exact runtime on the same seeded random
weights (tiny architecture): within `sam3_fast.TOLERANCE`, on a CPU with native bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam2serve.runtime.sam3_fast import TOLERANCE, Sam3FastRuntime, native_bf16
from sam2serve.runtime.sam3_runtime import Sam3Runtime, build_sam3_runtime, load_model
from sam2serve.testing import CountingAttention, sam3_tiny_spec

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def pair(sam3_tiny_weights_dir: Path) -> tuple[Sam3Runtime, Sam3FastRuntime]:
    spec = sam3_tiny_spec()
    checkpoint = sam3_tiny_weights_dir / spec.filename
    exact = build_sam3_runtime(spec, checkpoint, CPU)
    return exact, Sam3FastRuntime(spec.model_id, load_model(spec, checkpoint, CPU), CPU)


@needs_bf16
@pytest.mark.parametrize("route_all", [False, True], ids=["as-shipped", "all-attention-bf16"])
def test_fast_path_within_tolerance(pair, photo_set, monkeypatch, route_all) -> None:
    """As shipped, the tiny config's sequences are too short for the bf16 attention kernel;
    routing all of them to it checks the kernel's path end to end (the real config's)."""
    exact, fast = pair
    kernel = CountingAttention()
    if route_all:
        monkeypatch.setattr(fast, "attention", kernel)
    rgb = photo_set["chelsea"]
    want, got = exact.trunk(rgb), fast.trunk(rgb)
    assert (kernel.calls > 0) is route_all  # the ViT's attention
    assert got.shape == want.shape
    rel = float((got - want).norm() / want.norm())
    assert 0 < rel <= TOLERANCE["trunk_rel"]  # really bf16, and close
    fa, fb = exact.embed(rgb), fast.embed(rgb)
    for x, y in zip(fa.tensors, fb.tensors, strict=True):
        assert y.dtype == torch.float32 and y.stride() == x.stride()  # same cache format
    [text] = exact.encode_text(["cat"])
    boxes, labels = np.array([[50, 40, 300, 250]]), np.array([True])
    a = exact.concept(fa, text, boxes, labels)
    trunk_calls = kernel.calls
    b = fast.concept(fb, text, boxes, labels)
    assert (kernel.calls > trunk_calls) is route_all  # the fusion encoder's self-attention
    assert 0 < float(np.abs(a.scores - b.scores).max()) <= TOLERANCE["score_abs"]
    keep = np.flatnonzero(a.scores > np.quantile(a.scores, 0.9))
    ma, mb = exact.masks(fa, a, keep), fast.masks(fb, b, keep)
    assert ma.any(axis=(1, 2)).all()
    iou = (ma & mb).sum(axis=(1, 2)) / (ma | mb).sum(axis=(1, 2))
    assert float(iou.min()) >= TOLERANCE["mask_iou_min"]


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("torch", "Sam3Runtime"),
        ("openvino-bf16", "Sam3FastRuntime" if native_bf16() else "Sam3Runtime"),
    ],
)
def test_settings_pick_the_sam3_runtime(sam3_tiny_weights_dir: Path, runtime, expected) -> None:
    from sam2serve.config import Settings
    from sam2serve.runtime.factory import sam3_factory

    spec = sam3_tiny_spec()
    built = sam3_factory(Settings(runtime=runtime))(
        spec, sam3_tiny_weights_dir / spec.filename, CPU
    )
    assert type(built).__name__ == expected


def test_bf16_heads_keep_attention_fp32_and_nothing_outside() -> None:
    from sam2serve.runtime.sam3_heads import bf16_heads, install_fp32_attention

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"attn": torch.nn.MultiheadAttention(16, 2), "proj": torch.nn.Linear(16, 16)}
    )
    install_fp32_attention(model)
    install_fp32_attention(model)  # once per model: a second call adds no hooks
    assert len(model["attn"]._forward_pre_hooks) == 1
    x = torch.randn(5, 1, 16)
    with torch.inference_mode():
        plain = model["attn"](x, x, x)[0]
        with bf16_heads(CPU):
            assert model["proj"](x).dtype == torch.bfloat16  # autocast is on...
            inside = model["attn"](x.bfloat16(), x.bfloat16(), x.bfloat16())[0]
            with pytest.raises(AssertionError):  # a failing attention leaves autocast on
                model["attn"](x, x[:, :, :4], x)
            assert model["proj"](x).dtype == torch.bfloat16
        assert inside.dtype == torch.float32  # ...but not inside attention
        assert torch.equal(model["attn"](x, x, x)[0], plain)  # outside: untouched
        assert model["proj"](x).dtype == torch.float32


@needs_bf16
def test_fast_runtime_on_a_shared_model_leaves_the_exact_one_exact(
    sam3_tiny_weights_dir: Path, photo_set
) -> None:
    spec = sam3_tiny_spec()
    exact = build_sam3_runtime(spec, sam3_tiny_weights_dir / spec.filename, CPU)
    rgb = photo_set["chelsea"]
    features = exact.embed(rgb)
    [text] = exact.encode_text(["cat"])
    none = (np.zeros((0, 4)), np.zeros(0, bool))
    before = exact.concept(features, text, *none)
    fast = Sam3FastRuntime(spec.model_id, exact.model, CPU)  # hooks the shared modules
    deferred = fast.concept(features, text, *none)
    after = exact.concept(features, text, *none)
    assert torch.equal(before.mask_logits, after.mask_logits)
    assert np.array_equal(before.scores, after.scores)
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(after.low_res(idx), after.mask_logits[idx])
    # the fast path defers the segmentation head to the queries asked for
    assert deferred.mask_logits is None
    low = deferred.low_res(idx)
    assert low.dtype == torch.float32 and low.shape == after.mask_logits[idx].shape
    assert torch.equal(deferred.low_res(idx[:1]), low[:1])  # pixel embeddings computed once


@needs_bf16
def test_a_deferred_output_charges_what_it_will_hold(pair, photo_set) -> None:
    """`ConceptOutput.nbytes` (what the concept cache charges): the exact runtime's mask
    logits; the fast runtime's deferred head counts its pixel embedding before it exists,
    so a cached output never outgrows its charge when masks are asked later. The image's
    features (the deferred head reads them as they are) are not charged."""
    exact, fast = pair
    features = fast.embed(photo_set["chelsea"])
    [text] = fast.encode_text(["cat"])
    boxes, labels = np.array([[50, 40, 300, 250]]), np.array([True])
    out = fast.concept(features, text, boxes, labels)
    later = out.segment_later
    assert all(a is b for a, b in zip(later.fpn, features.fpn, strict=True))  # not copies
    charged = out.nbytes
    fast.masks(features, out, np.array([0, 5]))
    assert later._embeds is not None and out.nbytes == charged
    held = (later.memory, later.prompt, later.prompt_mask, later.queries, later._embeds)
    arrays = out.scores.nbytes + out.boxes_xyxy.nbytes + out.logits.nbytes
    storages = sum(t.untyped_storage().nbytes() for t in held)  # views keep their bases
    assert charged == arrays + storages + later.image_ids.untyped_storage().nbytes()
    full = exact.concept(exact.embed(photo_set["chelsea"]), text, boxes, labels)
    assert full.nbytes == arrays + full.mask_logits.nelement() * 4


@needs_bf16
def test_fast_features_travel_the_shared_tier_at_about_half_size(pair, photo_set) -> None:
    """The necks run in bf16: the store's codec keeps their outputs as bf16 (version 2) and
    gives them back as the same fp32 tensors, bit for bit, memory layout kept."""
    from sam2serve.store import codec

    _, fast = pair
    identity = codec.Identity("sam3", "ab" * 32, "Sam3FastRuntime-bf16")
    f = fast.embed(photo_set["chelsea"])
    value = codec.encode_features(identity, "h1", f)
    assert int.from_bytes(value[4:6], "little") == codec.VERSION_NARROWED
    assert len(value) < 0.6 * f.nbytes
    g = codec.decode_features(value, identity, "h1")
    for a, b in zip(f.tensors, g.tensors, strict=True):
        assert b.dtype == a.dtype == torch.float32 and _layout(a) == _layout(b)
        assert torch.equal(a, b)


def _layout(t: torch.Tensor) -> list[int]:
    """The strides that place values in memory (a size-1 dim's stride places nothing)."""
    return [s for s, n in zip(t.stride(), t.shape, strict=True) if n > 1]
