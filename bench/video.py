"""Video tracking speed: sam2serve's tracker vs Meta's SAM2VideoPredictor, same clip + weights.

For 1 and 3 objects (point prompts on frame 0) it measures, in one process and one run:
  * seconds per propagated frame (mean over the frames after the first),
  * time to the first streamed frame (propagation start -> first frame out),
for the reference (`init_state` + `propagate_in_video`) and for our tracker at each
requested precision. Weights are the real architecture with seeded random values.

    PYTHONPATH=$PWD python bench/video.py --frames 8 --precision fp32 bf16 fast [--device cpu]

`--model test_tiny` uses the small 256 px test architecture (quick smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sam2serve.runtime.video_tracker import VideoTracker, build_video_model
from sam2serve.testing import registry_with_test_model, write_random_checkpoint
from sam2serve.video.frames import _decoded, decode_video
from sam2serve.video.synthetic import synthetic_frames, write_mp4

POINTS = [(60.0, 120.0), (250.0, 50.0), (160.0, 200.0)]


#: the model's parts a propagated frame runs through (everything else is bookkeeping)
PARTS = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")


@contextlib.contextmanager
def part_clock(model: torch.nn.Module) -> Iterator[Counter[str]]:
    """Seconds spent in each of `PARTS` (forward hooks) while the block runs."""
    spent: Counter[str] = Counter()
    started: dict[str, float] = {}
    handles = []
    for name in PARTS:
        module = getattr(model, name)
        handles.append(
            module.register_forward_pre_hook(
                lambda _m, _i, n=name: started.__setitem__(n, time.perf_counter())
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda _m, _i, _o, n=name: spent.update({n: time.perf_counter() - started[n]})
            )
        )
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def _time_stream(stream) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """A frame counts as out once its GPU work is done (the reference yields CUDA tensors)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    stamps = []
    for _ in stream:
        sync()
        stamps.append(time.perf_counter())
    first = stamps[0] - started
    per_frame = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return first, per_frame, len(stamps)


def bench_reference(model, folder: Path, objects: int, device: torch.device) -> dict:  # type: ignore[no-untyped-def]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    with autocast or torch.inference_mode():
        state = model.init_state(str(folder))
        for obj in range(objects):
            model.add_new_points_or_box(
                state, 0, obj + 1, points=np.array([POINTS[obj]]), labels=np.array([1])
            )
        with part_clock(model) as parts:
            first, per_frame, n = _time_stream(model.propagate_in_video(state))
    return {"first_frame_s": first, "per_frame_s": per_frame, "frames": n, "parts_s": parts}


def bench_ours(tracker: VideoTracker, clip: Path, tmp: Path, objects: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp))
    reader, info = decode_video(clip, out, tracker.image_size, max_frames=10_000, max_pixels=10**8)
    state = tracker.new_state(reader, info.height, info.width, 1 << 30)
    for obj in range(objects):
        tracker.add_prompt(state, 0, obj + 1, points=np.array([POINTS[obj]]), labels=np.array([1]))
    with part_clock(tracker.model) as parts:
        first, per_frame, n = _time_stream(tracker.propagate(state, None, None, False))
    return {"first_frame_s": first, "per_frame_s": per_frame, "frames": n, "parts_s": parts}


def _tracker(spec, ckpt, model, device, precision: str, tmp: Path) -> VideoTracker:  # type: ignore[no-untyped-def]
    """fp32 (exact) | bf16 (autocast) | fast (OpenVINO encoder, the rest fp32)."""
    if precision != "fast":
        return VideoTracker(spec.model_id, model, device, precision)
    from sam2serve.runtime.openvino_runtime import load_runtime

    runtime = _RUNTIMES.get(spec.model_id) or load_runtime(spec, ckpt, tmp / "ov-cache")
    _RUNTIMES[spec.model_id] = runtime
    return VideoTracker(spec.model_id, model, device, "fp32", embed=runtime.embed)


_RUNTIMES: dict = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16", "fast"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    device = torch.device(args.device)
    spec = registry_with_test_model()[args.model]
    tmp = Path(tempfile.mkdtemp(prefix="bench-video-"))
    ckpt = write_random_checkpoint(spec, tmp, seed=1)
    clip = write_mp4(tmp / "clip.mp4", synthetic_frames(args.frames))
    folder = tmp / "frames"
    folder.mkdir()
    for i, rgb in enumerate(_decoded(clip)):
        Image.fromarray(rgb).save(folder / f"{i}.jpg", format="PNG")

    model = build_video_model(spec, ckpt, device)
    if device.type == "cuda":  # kernels, cuDNN autotuning and allocator warm-up, untimed
        bench_reference(model, folder, 1, device)
    rows = []
    for objects in args.objects:
        ref = bench_reference(model, folder, objects, device)
        rows.append({"runner": "SAM2VideoPredictor (reference)", "objects": objects, **ref})
        for precision in args.precision:
            tracker = _tracker(spec, ckpt, model, device, precision, tmp)
            ours = bench_ours(tracker, clip, tmp, objects)
            ratio = ours["per_frame_s"] / ref["per_frame_s"]
            rows.append(
                {"runner": f"sam2serve {precision}", "objects": objects, **ours, "ratio": ratio}
            )
    result = {
        "model": spec.model_id,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "frames": args.frames,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    print("| runner | objects | s / frame | first frame s | vs reference |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "1.00x"
        print(
            f"| {r['runner']} | {r['objects']} | {r['per_frame_s']:.3f} | "
            f"{r['first_frame_s']:.3f} | {ratio} |"
        )
    print()
    print("Where a propagation's time goes (share of its total, all frames):")
    print("| runner | objects | " + " | ".join(PARTS) + " | other |")
    print("|---|---|" + "---|" * (len(PARTS) + 1))
    for r in rows:
        total = r["per_frame_s"] * max(1, r["frames"] - 1) + r["first_frame_s"]
        shares = [r["parts_s"].get(p, 0.0) / total for p in PARTS]
        cells = " | ".join(f"{x:.0%}" for x in [*shares, 1 - sum(shares)])
        print(f"| {r['runner']} | {r['objects']} | {cells} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
