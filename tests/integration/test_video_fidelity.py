"""Exact path == Meta's SAM2VideoPredictor: same weights, same frames, same prompts; the
fast path (`SAM2SERVE_VIDEO_PRECISION=fast`) within its stated tolerance of it.

The reference gets the frames through its own loader (`init_state` on a JPEG-folder layout
whose files hold the lossless decoded frames), our tracker through the session frame file;
both then run the same scenario: a point prompt, forward propagation, a second object added
mid-video with a box, forward again, then backward propagation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam2serve.config import Settings
from sam2serve.registry import REGISTRY, ModelSpec
from sam2serve.runtime.factory import video_parts
from sam2serve.runtime.video_tracker import VideoTracker, build_video_model
from sam2serve.testing import tiny_test_spec
from sam2serve.video.frames import _decoded, decode_video
from sam2serve.video.synthetic import (
    CORRECTION_POINT,
    OBJECT_POINTS,
    synthetic_frames,
    write_mp4,
)

pytestmark = [pytest.mark.video]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _scenario(add_points, add_box, propagate) -> dict[tuple[str, int], np.ndarray]:  # type: ignore[no-untyped-def]
    """Run the scenario; returns {(step, frame): (N, H, W) bool masks}."""
    out: dict[tuple[str, int], np.ndarray] = {}
    out[("prompt1", 1)] = add_points(
        1, 1, np.array([[60.0, 120.0], [200.0, 40.0]]), np.array([1, 0])
    )
    for idx, masks in propagate(None, False):
        out[("fwd1", idx)] = masks
    out[("prompt2", 3)] = add_box(3, 2, np.array([210.0, 40.0, 280.0, 110.0]))
    for idx, masks in propagate(3, False):
        out[("fwd2", idx)] = masks
    for idx, masks in propagate(3, True):
        out[("bwd", idx)] = masks
    return out


def _reference(model: torch.nn.Module, rgb_frames: list[np.ndarray], tmp: Path) -> dict:
    folder = tmp / "ref-frames"
    folder.mkdir()
    for i, rgb in enumerate(rgb_frames):  # lossless content under the names upstream globs
        Image.fromarray(rgb).save(folder / f"{i}.jpg", format="PNG")
    state = model.init_state(str(folder))

    def add_points(frame, obj, pts, labels):  # type: ignore[no-untyped-def]
        _, _, logits = model.add_new_points_or_box(state, frame, obj, points=pts, labels=labels)
        return (logits[:, 0] > 0).cpu().numpy()

    def add_box(frame, obj, box):  # type: ignore[no-untyped-def]
        _, _, logits = model.add_new_points_or_box(state, frame, obj, box=box)
        return (logits[:, 0] > 0).cpu().numpy()

    def propagate(start, reverse):  # type: ignore[no-untyped-def]
        for idx, _, logits in model.propagate_in_video(
            state, start_frame_idx=start, reverse=reverse
        ):
            yield idx, (logits[:, 0] > 0).cpu().numpy()

    return _scenario(add_points, add_box, propagate)


def _ours(tracker: VideoTracker, clip: Path, tmp: Path) -> dict:
    out_dir = tmp / "session"
    out_dir.mkdir()
    reader, info = decode_video(clip, out_dir, tracker.image_size, max_frames=100, max_pixels=10**7)
    state = tracker.new_state(reader, info.height, info.width, feature_bytes=64 << 20)

    def add_points(frame, obj, pts, labels):  # type: ignore[no-untyped-def]
        return tracker.add_prompt(state, frame, obj, points=pts, labels=labels).logits > 0

    def add_box(frame, obj, box):  # type: ignore[no-untyped-def]
        return tracker.add_prompt(state, frame, obj, box=box).logits > 0

    def propagate(start, reverse):  # type: ignore[no-untyped-def]
        for fm in tracker.propagate(state, start, None, reverse):
            yield fm.frame_index, fm.logits > 0

    return _scenario(add_points, add_box, propagate)


@pytest.mark.parametrize(
    ("model", "frames"),
    [
        pytest.param("tiny", 6, id="tiny-256px"),
        pytest.param(
            "real", 4, id="hiera_tiny-2.1", marks=[pytest.mark.slow, pytest.mark.timeout(3600)]
        ),
    ],
)
def test_exact_path_equals_meta_video_predictor(
    model: str, frames: int, tiny_weights_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if model == "tiny":
        spec, weights = tiny_test_spec(), tiny_weights_dir
    else:
        spec, weights = REGISTRY["sam2.1_hiera_tiny"], request.getfixturevalue("real_weights_dir")
    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(frames))
    device = torch.device(os.environ.get("SAM2SERVE_TEST_DEVICE", "cpu"))
    video_model = build_video_model(spec, weights / spec.filename, device)
    tracker = VideoTracker(spec.model_id, video_model, device)

    ours = _ours(tracker, clip, tmp_path)
    ref = _reference(video_model, list(_decoded(clip)), tmp_path)

    assert list(ours) == list(ref)
    nonempty = [bool(m.any()) for m in ref.values()]
    assert sum(nonempty) >= 0.75 * len(nonempty), "reference tracks nothing: equality is vacuous"
    for key, expected in ref.items():
        got = ours[key]
        assert got.shape == expected.shape, key
        for obj in range(expected.shape[0]):
            assert _iou(got[obj], expected[obj]) >= 0.999, (key, obj)


def test_repropagation_reuses_frame_features(tiny_weights_dir: Path, tmp_path: Path) -> None:
    """A correction, then the whole clip again: no frame is encoded a second time (the
    session keeps every frame's features within its budget; the reference re-encodes them),
    and the re-propagation's masks equal the reference's (the exact test above)."""
    spec = tiny_test_spec()
    model = build_video_model(spec, tiny_weights_dir / spec.filename, torch.device("cpu"))
    tracker = VideoTracker(spec.model_id, model, torch.device("cpu"))
    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(4))
    reader, info = decode_video(clip, tmp_path, tracker.image_size, max_frames=10, max_pixels=10**7)
    state = tracker.new_state(reader, info.height, info.width, feature_bytes=64 << 20)
    tracker.add_prompt(state, 0, 1, points=np.array([OBJECT_POINTS[0]]), labels=np.array([1]))
    assert len(list(tracker.propagate(state, None, None, False))) == 4
    store = state["cached_features"]
    assert store.misses == 4
    tracker.add_prompt(state, 2, 1, points=np.array([CORRECTION_POINT]), labels=np.array([1]))
    assert len(list(tracker.propagate(state, None, None, False))) == 4
    assert store.misses == 4 and store.hits > 4


def _fast_tracker(spec: ModelSpec, checkpoint: Path, cache_dir: Path) -> VideoTracker:
    """`SAM2SERVE_VIDEO_PRECISION=fast` as the service builds it: the image runtime's
    OpenVINO encoder, memory attention + memory encoder compiled (bf16 where native)."""
    from sam2serve.runtime.openvino_runtime import load_runtime

    cpu = torch.device("cpu")
    settings = Settings(runtime="auto", runtime_cache_dir=cache_dir)
    parts = video_parts(settings, spec, checkpoint, cpu)
    assert parts is not None, "OpenVINO is installed: the fast path must compile its graphs"
    embed = load_runtime(spec, checkpoint, cache_dir).embed
    model = build_video_model(spec, checkpoint, cpu)
    return VideoTracker(spec.model_id, model, cpu, "fp32", embed=embed, parts=parts)


def _mean_iou(got: dict, expected: dict) -> tuple[float, list[float]]:
    """Mean mask IoU over every (step, frame) and object; the reference must track
    something on at least half of them (else agreement is vacuous)."""
    assert list(got) == list(expected)
    ious = [
        _iou(got[key][obj], expected[key][obj])
        for key in expected
        for obj in range(expected[key].shape[0])
    ]
    tracked = [
        bool(expected[key][obj].any()) for key in expected for obj in range(len(expected[key]))
    ]
    assert sum(tracked) >= 0.5 * len(tracked), "the reference tracks nothing: the check is vacuous"
    return float(np.mean(ious)), ious


@pytest.mark.openvino
def test_fast_path_tolerance(
    tiny_weights_dir: Path, tmp_path: Path, runtime_cache_dir: Path
) -> None:
    """Tiny architecture, the whole scenario (prompts, forward, a box mid-clip, backward):
    the fast path stays close to the exact path (mean IoU >= 0.9; the stated tolerance on
    the real architecture is the test below)."""
    spec = tiny_test_spec()
    ckpt = tiny_weights_dir / spec.filename
    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(6))
    model = build_video_model(spec, ckpt, torch.device("cpu"))
    exact = _ours(VideoTracker(spec.model_id, model, torch.device("cpu")), clip, tmp_path)
    fast_tracker = _fast_tracker(spec, ckpt, runtime_cache_dir)
    (tmp_path / "fast").mkdir()
    fast = _ours(fast_tracker, clip, tmp_path / "fast")
    mean, ious = _mean_iou(fast, exact)
    assert mean >= 0.9, ious


#: frames of bench/video.py's clip (its default)
BENCH_FRAMES = 8


@pytest.mark.openvino
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("objects", [1, 3])
def test_fast_path_vs_meta_video_predictor(
    objects: int, real_weights_dir: Path, runtime_cache_dir: Path, tmp_path: Path
) -> None:
    """The stated tolerance of `SAM2SERVE_VIDEO_PRECISION=fast`: on the bench clip and
    prompts (bench/video.py: 8 frames, one point per object on frame 0), real hiera_tiny
    architecture, mean mask IoU over frames and objects >= 0.98 against Meta's
    `SAM2VideoPredictor` (measured figures: docs/benchmarks.md). Seeded random weights give
    weak logits (|logit| ~0.1 around the mask edge) and masks that do not depend on the
    prompt, so the logits themselves are held to the reference as well (relative L2 error
    per frame <= 3%; measured <= 0.9% with bf16)."""
    spec = REGISTRY["sam2.1_hiera_tiny"]
    ckpt = real_weights_dir / spec.filename
    clip = write_mp4(tmp_path / "clip.mp4", synthetic_frames(BENCH_FRAMES))
    points = [np.array([OBJECT_POINTS[obj]]) for obj in range(objects)]

    folder = tmp_path / "ref-frames"
    folder.mkdir()
    for i, rgb in enumerate(_decoded(clip)):
        Image.fromarray(rgb).save(folder / f"{i}.jpg", format="PNG")
    reference = build_video_model(spec, ckpt, torch.device("cpu"))
    with torch.inference_mode():
        state = reference.init_state(str(folder))
        for obj, pts in enumerate(points):
            reference.add_new_points_or_box(state, 0, obj + 1, points=pts, labels=np.array([1]))
        expected = {
            ("fwd", idx): logits[:, 0].float().cpu().numpy()
            for idx, _, logits in reference.propagate_in_video(state)
        }
    del reference, state

    tracker = _fast_tracker(spec, ckpt, runtime_cache_dir)
    (tmp_path / "fast").mkdir()
    reader, info = decode_video(
        clip, tmp_path / "fast", tracker.image_size, max_frames=100, max_pixels=10**7
    )
    ours_state = tracker.new_state(reader, info.height, info.width, feature_bytes=256 << 20)
    for obj, pts in enumerate(points):
        tracker.add_prompt(ours_state, 0, obj + 1, points=pts, labels=np.array([1]))
    got = {
        ("fwd", fm.frame_index): fm.logits
        for fm in tracker.propagate(ours_state, None, None, False)
    }

    assert len(expected) == BENCH_FRAMES
    mean, ious = _mean_iou(
        {k: v > 0 for k, v in got.items()}, {k: v > 0 for k, v in expected.items()}
    )
    assert mean >= 0.98, ious
    for key, ref_logits in expected.items():
        error = np.linalg.norm(got[key] - ref_logits) / np.linalg.norm(ref_logits)
        assert error <= 0.03, (key, error)
