"""The OpenVINO runtime and its rearranged decoder, on the tiny test architecture.

Structural checks: the rearranged decoder equals upstream's `predict_masks`; the f32
OpenVINO runtime equals the torch runtime; bf16 keeps shapes and dtypes; the
exported graphs are built once per (model, weights, version) and reused; the int8 encoder
once per recipe, with its own precision (Redis values name it); "auto" measures its choice
once and records it; the first click after an embed finds the decoder prepared; the factory
falls back to torch when OpenVINO is missing or cannot do bf16. Fidelity on the real hiera_tiny
architecture is in tests/integration/test_fast_runtime_fidelity.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional

from sam2serve.runtime import choice, quantize
from sam2serve.runtime import openvino_export as ovx
from sam2serve.runtime import openvino_runtime as ovr
from sam2serve.runtime.base import Features, PromptBatch
from sam2serve.runtime.fast_decoder import DecoderPrep, FastMaskDecoder, token_bias
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
from sam2serve.testing import tiny_test_spec

pytestmark = [pytest.mark.openvino, pytest.mark.model]

pytest.importorskip("openvino")

SPEC = tiny_test_spec()

# (coords in pixels of a 200x300 (h, w) image, labels) per prompt; padded per batch below
PROMPT_SETS = {
    "one point": [([[150, 80]], [1])],
    "box": [([[40, 30], [220, 150]], [2, 3])],
    "mixed batch": [
        ([[150, 80]], [1]),
        ([[40, 30], [220, 150], [120, 90]], [2, 3, 1]),
        ([[10, 10], [290, 190], [100, 100]], [1, 0, 1]),
    ],
}


def _batch(prompts: list[tuple[list, list]]) -> PromptBatch:
    width = max(len(labels) for _, labels in prompts)
    coords = np.zeros((len(prompts), width, 2), np.float32)
    labels = np.full((len(prompts), width), -1, np.int32)
    for i, (c, lab) in enumerate(prompts):
        coords[i, : len(c)] = c
        labels[i, : len(lab)] = lab
    return PromptBatch(coords, labels)


@pytest.fixture(scope="module")
def checkpoint(tiny_weights_dir: Path) -> Path:
    return tiny_weights_dir / SPEC.filename


@pytest.fixture(scope="module")
def cache_dir(runtime_cache_dir: Path) -> Path:
    """The session's export dir: the graphs other tests exported for the same checkpoint
    are reused (an export of the test model costs ~30 s on this CPU)."""
    return runtime_cache_dir


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> TorchRuntime:
    return TorchRuntime(
        SPEC.model_id, build_model(SPEC, checkpoint, torch.device("cpu")), torch.device("cpu")
    )


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(PROMPT_SETS))
def test_rearranged_decoder_equals_upstream(
    reference: TorchRuntime, image: np.ndarray, name: str
) -> None:
    model = reference.model
    features = reference.embed(image)
    batch = _batch(PROMPT_SETS[name])
    coords = reference.transforms.transform_coords(
        torch.as_tensor(batch.coords), normalize=True, orig_hw=features.orig_hw
    )
    pe_enc = model.sam_prompt_encoder
    with torch.inference_mode():
        sparse, dense = pe_enc(
            points=(coords, torch.as_tensor(batch.labels)), boxes=None, masks=None
        )
        want = model.sam_mask_decoder.predict_masks(
            features.image_embed,
            pe_enc.get_dense_pe(),
            sparse,
            dense,
            True,
            list(features.high_res),
        )
        prep = DecoderPrep(model)
        decoder = FastMaskDecoder(model, prep)
        prepped = prep(features.image_embed, *features.high_res)
        n, k, _ = sparse.shape
        got = decoder(*prepped, sparse, token_bias(n, k, k))
        # padded to 16 tokens, the padding masked out of attention: the same result
        padded = decoder(
            *prepped, functional.pad(sparse, (0, 0, 0, 16 - k), value=7.0), token_bias(n, 16, k)
        )
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded[0], got[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1], got[1], atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def f32_runtime(checkpoint: Path, cache_dir: Path) -> ovr.OpenVinoRuntime:
    return ovr.load_runtime(SPEC, checkpoint, cache_dir, "f32")


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("name", list(PROMPT_SETS))
def test_f32_runtime_equals_reference(
    f32_runtime: ovr.OpenVinoRuntime,
    reference: TorchRuntime,
    image: np.ndarray,
    name: str,
    multimask: bool,
) -> None:
    batch = _batch(PROMPT_SETS[name])
    want = reference.decode(reference.embed(image), batch, multimask)
    got_features = f32_runtime.embed(image)
    got = f32_runtime.decode(got_features, batch, multimask)
    torch.testing.assert_close(got.scores, want.scores, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(got.low_res, want.low_res, atol=2e-2, rtol=1e-3)
    assert f32_runtime.low_res_size == reference.low_res_size
    full = f32_runtime.upscale(got.low_res[:, 0], got_features.orig_hw)
    assert full.shape == (len(batch), 200, 300)


@pytest.mark.parametrize(
    ("prompts", "points", "calls"),
    [
        # one point per prompt (2 tokens): rows share calls in twos, an odd one alone
        (5, 1, [(2, 2), (2, 2), (1, 2)]),
        # 3 points + padding point -> 4 tokens: one prompt per call
        (3, 3, [(1, 4)] * 3),
        (1, 9, [(1, 16)]),
    ],
)
def test_decoder_runs_only_at_the_stated_shapes(
    f32_runtime: ovr.OpenVinoRuntime,
    image: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    prompts: int,
    points: int,
    calls: list[tuple[int, int]],
) -> None:
    """(rows, tokens) of each decoder call: a few fixed shapes, whatever the request."""
    seen: list[tuple[int, int]] = []
    real = f32_runtime._infer

    def spy(prepared, sparse, bias):  # type: ignore[no-untyped-def]
        seen.append((sparse.shape[0], sparse.shape[1]))
        return real(prepared, sparse, bias)

    monkeypatch.setattr(f32_runtime, "_infer", spy)
    rng = np.random.default_rng(points)
    coords = rng.uniform(10, 190, (prompts, points, 2)).astype(np.float32)
    labels = np.ones((prompts, points), np.int32)
    got = f32_runtime.decode(f32_runtime.embed(image), PromptBatch(coords, labels), True)
    assert seen == calls
    assert got.low_res.shape[0] == prompts


def test_mask_input_goes_through_the_reference_path(
    f32_runtime: ovr.OpenVinoRuntime, reference: TorchRuntime, image: np.ndarray
) -> None:
    batch = _batch(PROMPT_SETS["mixed batch"])
    m = reference.low_res_size
    masks = np.random.default_rng(1).normal(size=(len(batch), 1, m, m)).astype(np.float32)
    refine = PromptBatch(batch.coords, batch.labels, masks, np.array([True, False, True]))
    want = reference.decode(reference.embed(image), refine, True)
    got = f32_runtime.decode(f32_runtime.embed(image), refine, True)
    torch.testing.assert_close(got.low_res, want.low_res, atol=2e-2, rtol=1e-3)


def test_bf16_runtime_shapes_and_compact_features(
    checkpoint: Path, cache_dir: Path, image: np.ndarray
) -> None:
    if ovr.probe("auto") != "bf16":
        pytest.skip("CPU without native bf16")
    runtime = ovr.load_runtime(SPEC, checkpoint, cache_dir, "bf16")
    features = runtime.embed(image)
    assert features.image_embed.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for t in features.high_res)
    batch = _batch(PROMPT_SETS["mixed batch"])
    decoded = runtime.decode(features, batch, True)
    m = runtime.low_res_size
    assert decoded.low_res.shape == (3, 3, m, m) and decoded.scores.shape == (3, 3)
    assert decoded.low_res.dtype == torch.float32
    assert torch.isfinite(decoded.low_res).all()
    # the per-image decoder inputs are memoised: a second decode reuses them
    first = runtime._prepared(features)
    assert runtime._prepared(features) is first


def test_export_is_cached_and_reused(checkpoint: Path, cache_dir: Path) -> None:
    first = ovr.build_cache(SPEC, checkpoint, cache_dir)  # built by the runtime fixtures
    stamps = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}
    assert {"encoder.xml", "prep.xml", "decoder.xml", "meta.json"} <= set(stamps)
    again = ovr.build_cache(SPEC, checkpoint, cache_dir)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in again.iterdir() if p.is_file()} == stamps
    assert SPEC.model_id in first.name and ovx.file_sha256(checkpoint)[:16] in first.name
    # no half-built leftovers (the export's lock file stays, empty); the video graphs that
    # other tests export into the same cache dir sit beside it under their own name
    mine = [
        p.name
        for p in cache_dir.iterdir()
        if p.suffix != ".lock" and SPEC.model_id in p.name and "-video-" not in p.name
    ]
    assert mine == [first.name]


def test_cache_key_changes_with_the_weights(checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / SPEC.filename
    other.write_bytes(checkpoint.read_bytes() + b"\0")
    assert ovx.cache_key_dir(SPEC, checkpoint, tmp_path) != ovx.cache_key_dir(SPEC, other, tmp_path)


def test_factory_falls_back_to_torch_when_openvino_is_missing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ovr.BackendUnavailable, match="pip install openvino"):
        ovr.probe()
    runtime = ovr.make_factory(tmp_path)(SPEC, checkpoint, torch.device("cpu"))
    assert isinstance(runtime, TorchRuntime)
    assert not any(tmp_path.iterdir())  # nothing exported


def _fake_openvino(caps: list[str]) -> types.SimpleNamespace:
    core = types.SimpleNamespace(get_property=lambda device, key: caps)
    return types.SimpleNamespace(Core=lambda: core, __version__="0")


@pytest.mark.parametrize(
    ("caps", "asked", "expected"),
    [
        (["FP32", "BF16"], "auto", "bf16"),
        (["FP32"], "auto", "f32"),
        (["FP32"], "f32", "f32"),
        (["FP32"], "bf16", None),  # None: refused
    ],
)
def test_probe_checks_native_bf16(
    monkeypatch: pytest.MonkeyPatch, caps: list[str], asked: str, expected: str | None
) -> None:
    monkeypatch.setattr(ovx, "_openvino", lambda: _fake_openvino(caps))
    monkeypatch.setattr(ovx, "bf16_compiles", lambda: True)
    if expected is None:
        with pytest.raises(ovr.BackendUnavailable, match="bf16"):
            ovr.probe(asked)  # type: ignore[arg-type]
    else:
        assert ovr.probe(asked) == expected  # type: ignore[arg-type]


def test_probe_refuses_bf16_when_a_bf16_graph_does_not_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ISA cap (ONEDNN_MAX_CPU_ISA=AVX2) leaves BF16 in the capability list but makes
    every bf16 compile fail: the probe must then compute in f32."""
    fake = _fake_openvino(["FP32", "BF16"])
    tried: list[object] = []

    def refuse(graph: object, device: str, config: dict[str, str]) -> None:
        tried.append(config["INFERENCE_PRECISION_HINT"])
        raise RuntimeError("object is not initialized")  # what OpenVINO says under the cap

    import openvino

    fake.Core().compile_model = refuse  # only the plugin is fake: the graph is built for real
    for name in ("Type", "Shape", "Tensor", "Model"):
        setattr(fake, name, getattr(openvino, name))
    monkeypatch.setattr(ovx, "_openvino", lambda: fake)
    assert ovx.bf16_compiles.__wrapped__() is False
    assert tried == ["bf16"]
    monkeypatch.setattr(ovx, "bf16_compiles", lambda: False)
    assert ovr.probe("auto") == "f32"
    with pytest.raises(ovr.BackendUnavailable, match="bf16"):
        ovr.probe("bf16")


def test_bf16_compile_check_agrees_with_the_capability_list() -> None:
    """On an uncapped CPU that lists BF16 a bf16 graph compiles; one that does not list it
    may still compile one (an Ice Lake Xeon does: emulated, far slower), and the probe
    must then still say f32."""
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "DNNL_MAX_CPU_ISA" in os.environ:
        pytest.skip("an ISA cap is set")
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        assert ovx.bf16_compiles.__wrapped__()
        assert ovx.probe("auto") == "bf16"
    else:
        assert ovx.probe("auto") == "f32"


def test_factory_falls_back_without_bf16(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ovx, "_openvino", lambda: _fake_openvino(["FP32"]))
    runtime = ovr.make_factory(tmp_path, precision="bf16")(SPEC, checkpoint, torch.device("cpu"))
    assert isinstance(runtime, TorchRuntime)


def test_factory_uses_torch_off_cpu(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.device] = []

    def fake_torch_factory(spec: object, ckpt: Path, device: torch.device) -> str:
        seen.append(device)
        return "torch"

    monkeypatch.setattr(ovr, "torch_runtime_factory", fake_torch_factory)
    assert ovr.make_factory(tmp_path)(SPEC, checkpoint, torch.device("cuda")) == "torch"
    assert seen == [torch.device("cuda")]


# -- int8 encoder, measured choice, first click ---------------------------------------------


@pytest.fixture(scope="module")
def int8_runtime(checkpoint: Path, cache_dir: Path) -> ovr.OpenVinoRuntime:
    pytest.importorskip("nncf")
    return ovr.load_runtime(SPEC, checkpoint, cache_dir, "int8")


def test_int8_encoder_is_built_once_per_recipe(
    int8_runtime: ovr.OpenVinoRuntime,
    checkpoint: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    graphs = ovx.cache_key_dir(SPEC, checkpoint, cache_dir)
    kind = ovx.probe("int8")  # "bf16" | "f32": what the graph computes in around int8 here
    path = graphs / quantize.int8_encoder_name(kind)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    assert quantize.recipe_id(kind) in path.name
    stamp = path.stat().st_mtime_ns

    def never(*args: object) -> None:
        raise AssertionError("quantized again")

    monkeypatch.setattr(quantize, "_quantize", never)
    assert quantize.build_int8_encoder(graphs, lambda rgb: rgb, kind) == path  # reused
    assert path.stat().st_mtime_ns == stamp
    # a changed recipe (or NNCF version, or calibration image) is another graph
    monkeypatch.setitem(quantize.recipe(kind), "fast_bias_correction", False)
    assert quantize.int8_encoder_name(kind) != path.name
    assert not quantize.is_quantized(graphs, kind)


def test_the_int8_recipe_keeps_attention_float_where_bf16_is_not_native() -> None:
    """On a CPU without native bf16 the int8 graph's attention stays float (measured: its
    int8 inputs cost 24-30 % feature error there); each kind has its own graph file."""
    assert "ScaledDotProductAttention" in quantize.recipe("f32")["ignored_types"]
    assert "ignored_types" not in quantize.recipe("bf16")
    assert quantize.recipe_id("f32") != quantize.recipe_id("bf16")
    assert quantize.int8_encoder_name("f32") != quantize.int8_encoder_name("bf16")


def test_int8_runtime_reports_its_own_precision(
    int8_runtime: ovr.OpenVinoRuntime, reference: TorchRuntime, image: np.ndarray
) -> None:
    inference = ovr.probe()
    assert int8_runtime.precision == f"int8-{inference}"
    assert int8_runtime.encoder_precision == "int8"
    features = int8_runtime.embed(image)
    assert features.image_embed.dtype == torch.bfloat16  # stored compactly on every CPU kind
    want = reference.embed(image).image_embed.flatten()
    got = features.image_embed.float().flatten()
    assert torch.corrcoef(torch.stack([want, got]))[0, 1] > 0.95  # int8, not noise
    decoded = int8_runtime.decode(features, _batch(PROMPT_SETS["mixed batch"]), True)
    assert decoded.low_res.shape[:2] == (3, 3) and torch.isfinite(decoded.low_res).all()


def test_shared_tier_values_name_the_encoder_precision(
    int8_runtime: ovr.OpenVinoRuntime,
    f32_runtime: ovr.OpenVinoRuntime,
    tiny_weights_dir: Path,
    image: np.ndarray,
) -> None:
    """Replicas on another encoder refuse each other's Redis values (no mixed features)."""
    import asyncio

    pytest.importorskip("redis")
    from sam2serve.store import codec
    from sam2serve.store.keys import Scope
    from sam2serve.store.redis_tier import SharedTier
    from sam2serve.store.sharing import RedisSharing

    tier = SharedTier("redis://127.0.0.1:1/0")  # never connected here
    sharing = RedisSharing(tier, tiny_weights_dir)

    async def no_embed(rgb: np.ndarray):  # type: ignore[no-untyped-def]
        raise AssertionError("identity never embeds")

    ids = {
        rt.precision: asyncio.run(sharing.identity(Scope("ns", SPEC, rt, no_embed)))
        for rt in (int8_runtime, f32_runtime)
    }
    assert len({i.producer for i in ids.values()}) == 2
    value = codec.encode_features(ids["f32"], "hash", f32_runtime.embed(image))
    with pytest.raises(codec.CodecError, match="producer"):
        codec.decode_features(value, ids[int8_runtime.precision], "hash")


def test_first_click_after_an_embed_finds_the_decoder_prepared(
    f32_runtime: ovr.OpenVinoRuntime, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    preps: list[int] = []
    real = f32_runtime._run_prep

    def spy(features):  # type: ignore[no-untyped-def]
        preps.append(id(features.image_embed))
        return real(features)

    monkeypatch.setattr(f32_runtime, "_run_prep", spy)
    batch = _batch(PROMPT_SETS["one point"])
    clicked = f32_runtime.embed(image)
    assert len(preps) == 1  # done by the embed
    f32_runtime.decode(clicked, batch, True)
    assert len(preps) == 1  # the first click reuses it
    # embeds of other images never push an image being clicked out of the memo
    others = [f32_runtime.embed(image) for _ in range(ovr.PREP_FRESH + ovr.PREP_MEMO)]
    f32_runtime.decode(clicked, batch, True)
    assert len(preps) == 1 + len(others)
    # the last PREP_FRESH embedded images are ready for their first click; older ones not
    for features in others[-ovr.PREP_FRESH :]:
        f32_runtime.decode(features, batch, True)
    assert len(preps) == 1 + len(others)
    f32_runtime.decode(others[0], batch, True)
    assert len(preps) == 2 + len(others)
    # features that were not embedded here (fetched from the shared tier): prepared once
    fetched = Features(
        image_embed=clicked.image_embed.clone(),
        high_res=tuple(t.clone() for t in clicked.high_res),
        orig_hw=clicked.orig_hw,
    )
    first = f32_runtime.decode(fetched, batch, True)
    again = f32_runtime.decode(fetched, batch, True)
    assert len(preps) == 3 + len(others)
    torch.testing.assert_close(first.low_res, again.low_res)
    torch.testing.assert_close(first.low_res, f32_runtime.decode(clicked, batch, True).low_res)


def test_auto_measures_the_choice_once_and_records_it(
    int8_runtime: ovr.OpenVinoRuntime,
    checkpoint: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `auto` the candidates are timed and checked once per runtime cache; later loads
    reuse the record (in the runtime cache, in /info's `runtimes`)."""
    cache = tmp_path / "cache"
    assert not ovr.is_prepared(SPEC, checkpoint, cache)
    # the graphs and the int8 encoder as exported and quantized already (not the choice)
    shutil.copytree(
        ovx.cache_key_dir(SPEC, checkpoint, cache_dir),
        ovx.cache_key_dir(SPEC, checkpoint, cache),
        ignore=shutil.ignore_patterns("choice-*", "compiled-*", "*.lock"),
    )
    assert not ovr.is_prepared(SPEC, checkpoint, cache)
    runtime = ovr.load_runtime(SPEC, checkpoint, cache, "auto")
    assert ovr.is_prepared(SPEC, checkpoint, cache)
    inference = ovr.probe()
    graphs = ovx.cache_key_dir(SPEC, checkpoint, cache)
    record = json.loads(choice.choice_path(graphs, inference).read_text())
    expected = {"f32", "int8", *(["bf16"] if inference == "bf16" else [])}
    assert set(record["candidates"]) == expected
    assert record["candidates"]["f32"]["mean_iou"] == 1.0
    assert runtime.choice == record and runtime.encoder_precision == record["chosen"]
    assert record["candidates"][record["chosen"]]["meets_tolerance"]

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(choice, "measure", never)
    again = ovr.load_runtime(SPEC, checkpoint, cache, "auto")
    assert again.precision == runtime.precision and again.choice == record
    # pinned runtimes neither measure nor read the choice
    assert ovr.load_runtime(SPEC, checkpoint, cache, "f32").choice is None


def test_the_choice_shows_in_info(tmp_path: Path) -> None:
    from sam2serve.runtime.pool import ModelPool

    pool = ModelPool(tmp_path, torch.device("cpu"))
    record = {
        "chosen": "f32",
        "measured_at": "2026-11-27T00:00:00+00:00",
        "tolerance": choice.TOLERANCE,
        "candidates": {"f32": {"embed_s": 0.5, "mean_iou": 1.0, "min_iou": 1.0}},
    }
    runtime = ovr.OpenVinoRuntime.__new__(ovr.OpenVinoRuntime)  # only what describe reads
    runtime.precision, runtime.choice = "f32", record
    pool._loaded[SPEC.model_id] = runtime
    described = pool.describe()[SPEC.model_id]
    assert described["precision"] == "f32"
    assert described["choice"]["encoder"] == "f32"
    assert described["choice"]["candidates"]["f32"]["embed_s"] == 0.5
