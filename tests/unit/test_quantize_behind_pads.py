"""int8 encoder recipe: matmuls whose quantizer sits before a zero Pad get their own
(runtime/quantize.py `quantize_behind_pads`), on a tiny graph shaped like Hiera's padded
window attention: FakeQuantize -> Pad -> Reshape -> MatMul(int8 weights)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2serve.runtime.quantize import quantize_behind_pads

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset13")


def _int8_weights(rng: np.random.Generator) -> object:
    """NNCF's weight pattern: Constant i8 -> Convert f32 -> Multiply by a scale."""
    q = ops.constant(rng.integers(-127, 128, (8, 8)).astype(np.int8))
    return ops.multiply(ops.convert(q, ov.Type.f32), ops.constant(np.float32(0.01)))


def _fq(x: object, lo: float, hi: float) -> object:
    lo_c, hi_c = ops.constant(np.float32(lo)), ops.constant(np.float32(hi))
    return ops.fake_quantize(x, lo_c, hi_c, lo_c, hi_c, 256)


def _graph() -> object:
    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 8], ov.Type.f32)
    fq = _fq(x, -3.0, 3.0)
    padded = ops.pad(fq, np.array([0, 0, 0], np.int64), np.array([0, 1, 0], np.int64), "constant")
    flat = ops.reshape(padded, ops.constant(np.array([4, 8], np.int64)), False)
    behind_pad = ops.matmul(flat, _int8_weights(rng), False, False)
    behind_pad.set_friendly_name("behind_pad")
    direct = ops.matmul(_fq(x, -3.0, 3.0), _int8_weights(rng), False, False)
    direct.set_friendly_name("direct")
    return ov.Model([behind_pad, direct], [x])


def _feeds(graph: object, name: str) -> str:
    matmul = next(op for op in graph.get_ordered_ops() if op.get_friendly_name() == name)
    return matmul.input_value(0).get_node().get_type_name()


def test_a_matmul_behind_a_pad_gets_its_own_quantizer() -> None:
    graph = _graph()
    samples = [np.random.default_rng(i).normal(size=(1, 3, 8)).astype(np.float32) for i in range(2)]
    before = [
        ov.Core().compile_model(_graph(), "CPU").create_infer_request().infer([s]) for s in samples
    ]
    assert quantize_behind_pads(graph, samples) == ["behind_pad"]
    assert _feeds(graph, "behind_pad") == "FakeQuantize"
    assert _feeds(graph, "direct") == "FakeQuantize"  # had one: untouched, not doubled
    fq = next(
        op
        for op in graph.get_ordered_ops()
        if op.get_type_name() == "FakeQuantize"
        and op.output(0).get_target_inputs()
        and next(iter(op.output(0).get_target_inputs())).get_node().get_friendly_name()
        == "behind_pad"
    )
    low = fq.input_value(1).get_node().get_data()
    assert low <= 0.0 <= fq.input_value(2).get_node().get_data()  # the padding's 0 is in range
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for sample, want in zip(samples, before, strict=True):
        got = compiled.create_infer_request().infer([sample])
        np.testing.assert_allclose(got[0], want[0], atol=0.05)  # one more 8-bit rounding


def test_nothing_to_do_leaves_the_graph_alone() -> None:
    x = ops.parameter([1, 3, 8], ov.Type.f32)
    direct = ops.matmul(_fq(x, -3.0, 3.0), _int8_weights(np.random.default_rng(0)), False, False)
    graph = ov.Model([direct], [x])
    assert quantize_behind_pads(graph, [np.zeros((1, 3, 8), np.float32)]) == []
