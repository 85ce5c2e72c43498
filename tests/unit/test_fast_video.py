"""The fast video path's graphs (memory attention, memory encoder), on the tiny test
architecture (256 px: memories of 16 x 16 = 256 tokens per frame).

Structural checks: the export-friendly graphs equal upstream's modules in torch (any memory
length, with and without object pointers); the compiled OpenVINO graphs equal them at f32 and
stay close at bf16; calls the graph does not cover go to upstream's module; the graphs are
exported once per (model, weights, OpenVINO version) and reused; the factory gives no graphs
where the torch modules must serve. Fidelity of the whole fast path against Meta's
`SAM2VideoPredictor` is in tests/integration/test_video_fidelity.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam2serve.config import Settings
from sam2serve.runtime.factory import video_parts
from sam2serve.runtime.video_tracker import VideoTracker, build_video_model
from sam2serve.testing import tiny_test_spec

pytestmark = [pytest.mark.video]

SPEC = tiny_test_spec()
HW = 256  # tokens per frame of the tiny model's lowest feature level
C, CM = 256, 64  # hidden dim, memory dim

# (memory frames, object pointer tokens) as upstream's propagation produces them: the first
# tracked frame, a few frames in, a full memory bank; and a frame without pointers
MEMORY_SHAPES = [(1, 4), (3, 12), (7, 64), (2, 0)]


def _inputs(frames: int, pointers: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(HW, 1, C)] * 2 + [(frames * HW, 1, CM)] * 2 + [(pointers, 1, CM)] * 2
    return [torch.randn(s, generator=gen) for s in shapes]


def _upstream(attention: torch.nn.Module, x: list[torch.Tensor]) -> torch.Tensor:
    curr, curr_pos, memory, memory_pos, ptr, ptr_pos = x
    return attention(
        curr=curr,
        curr_pos=curr_pos,
        memory=torch.cat([memory, ptr]),
        memory_pos=torch.cat([memory_pos, ptr_pos]),
        num_obj_ptr_tokens=ptr.shape[0],
    )


def _rel(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.fixture(scope="module")
def checkpoint(tiny_weights_dir: Path) -> Path:
    return tiny_weights_dir / SPEC.filename


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> torch.nn.Module:
    return build_video_model(SPEC, checkpoint, torch.device("cpu"))


@pytest.mark.parametrize(("frames", "pointers"), MEMORY_SHAPES)
@torch.inference_mode()
def test_memory_attention_graph_equals_upstream(
    model: torch.nn.Module, frames: int, pointers: int
) -> None:
    from sam2serve.runtime.openvino_video import MemoryAttentionGraph

    x = _inputs(frames, pointers)
    expected = _upstream(model.memory_attention, x)
    got = MemoryAttentionGraph(model.memory_attention, HW).eval()(*x)
    assert got.shape == expected.shape == (HW, 1, C)
    assert _rel(got, expected) < 1e-5


@torch.inference_mode()
def test_memory_encoder_graph_equals_upstream(model: torch.nn.Module) -> None:
    from sam2serve.runtime.openvino_video import MemoryEncoderGraph

    gen = torch.Generator().manual_seed(0)
    pix, masks = torch.randn(2, C, 16, 16, generator=gen), torch.rand(2, 1, 256, 256, generator=gen)
    expected = model.memory_encoder(pix, masks, skip_mask_sigmoid=True)["vision_features"]
    got = MemoryEncoderGraph(model.memory_encoder).eval()(pix, masks)
    assert got.shape == expected.shape == (2, CM, 16, 16)
    assert _rel(got, expected) < 1e-6


def test_no_graphs_where_torch_must_serve(checkpoint: Path, tmp_path: Path) -> None:
    settings = Settings(runtime="torch", runtime_cache_dir=tmp_path)
    assert video_parts(settings, SPEC, checkpoint, torch.device("cpu")) is None
    auto = Settings(runtime="auto", runtime_cache_dir=tmp_path)
    assert video_parts(auto, SPEC, checkpoint, torch.device("meta")) is None
    assert not list(tmp_path.iterdir()), "nothing is exported when no graph will run"


# -- compiled (OpenVINO) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def graphs_dir(checkpoint: Path, runtime_cache_dir: Path) -> Path:
    pytest.importorskip("openvino")
    from sam2serve.runtime.openvino_video import build_video_cache

    return build_video_cache(SPEC, checkpoint, runtime_cache_dir)


@pytest.fixture(scope="module", params=["f32", "bf16"])
def compiled(request: pytest.FixtureRequest, graphs_dir: Path):  # type: ignore[no-untyped-def]
    from sam2serve.runtime.openvino_export import BackendUnavailable, probe
    from sam2serve.runtime.openvino_video import VideoGraphs

    try:
        probe(request.param)
    except BackendUnavailable as exc:
        pytest.skip(f"{request.param}: {exc}")
    return VideoGraphs(graphs_dir, request.param)


#: relative error of the compiled graphs vs upstream's fp32 modules
TOLERANCE = {"f32": 1e-5, "bf16": 2e-2}


@pytest.mark.openvino
@pytest.mark.parametrize(("frames", "pointers"), MEMORY_SHAPES)
@torch.inference_mode()
def test_compiled_memory_attention(
    model: torch.nn.Module,
    compiled,
    frames: int,
    pointers: int,  # type: ignore[no-untyped-def]
) -> None:
    from sam2serve.runtime.openvino_video import OvMemoryAttention

    x = _inputs(frames, pointers, seed=frames)
    expected = _upstream(model.memory_attention, x)
    fast = OvMemoryAttention(compiled._graphs["memory_attention"], model.memory_attention, HW)
    got = _upstream(fast, x)  # the same call upstream makes
    assert fast.fallbacks == 0
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert _rel(got, expected) < TOLERANCE[compiled.precision]


@pytest.mark.openvino
@torch.inference_mode()
def test_compiled_memory_encoder(model: torch.nn.Module, compiled) -> None:  # type: ignore[no-untyped-def]
    from sam2serve.runtime.openvino_video import OvMemoryEncoder

    gen = torch.Generator().manual_seed(1)
    pix, logits = (
        torch.randn(1, C, 16, 16, generator=gen),
        torch.randn(1, 1, 256, 256, generator=gen),
    )
    expected = model.memory_encoder(pix, logits)
    got = OvMemoryEncoder(compiled._graphs["memory_encoder"], model.memory_encoder)(pix, logits)
    assert _rel(got["vision_features"], expected["vision_features"]) < TOLERANCE[compiled.precision]
    assert torch.equal(got["vision_pos_enc"][0], expected["vision_pos_enc"][0])


@pytest.mark.openvino
@torch.inference_mode()
def test_uncovered_calls_run_upstream(model: torch.nn.Module, compiled) -> None:  # type: ignore[no-untyped-def]
    """Two objects in one call (upstream propagates one per call): upstream's module."""
    from sam2serve.runtime.openvino_video import OvMemoryAttention

    fast = OvMemoryAttention(compiled._graphs["memory_attention"], model.memory_attention, HW)
    two = [torch.cat([t, t + 1], dim=1) for t in _inputs(2, 8)]
    assert torch.equal(_upstream(fast, two), _upstream(model.memory_attention, two))
    assert fast.fallbacks == 1


@pytest.mark.openvino
def test_tracker_installs_graphs_and_says_so(checkpoint: Path, compiled) -> None:  # type: ignore[no-untyped-def]
    from sam2serve.runtime.openvino_video import OvMemoryAttention, OvMemoryEncoder

    model = build_video_model(SPEC, checkpoint, torch.device("cpu"))
    tracker = VideoTracker(SPEC.model_id, model, torch.device("cpu"), parts=compiled)
    assert isinstance(model.memory_attention, OvMemoryAttention)
    assert isinstance(model.memory_encoder, OvMemoryEncoder)
    expected = f"openvino-{compiled.precision}"
    assert tracker.describe() == {
        "image_encoder": "torch-fp32",
        "memory_attention": expected,
        "memory_encoder": expected,
    }


@pytest.mark.openvino
def test_video_graphs_exported_once(
    checkpoint: Path, graphs_dir: Path, runtime_cache_dir: Path
) -> None:
    from sam2serve.runtime.openvino_video import VIDEO_GRAPHS, build_video_cache

    meta = graphs_dir / "meta.json"
    stamp = meta.stat().st_mtime_ns
    assert build_video_cache(SPEC, checkpoint, runtime_cache_dir) == graphs_dir
    assert meta.stat().st_mtime_ns == stamp
    assert all((graphs_dir / f"{name}.xml").is_file() for name in VIDEO_GRAPHS)
    assert graphs_dir.name.startswith(f"{SPEC.model_id}-") and "-video-v" in graphs_dir.name
