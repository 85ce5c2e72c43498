"""Video tracking speed: sam2serve's tracker vs Meta's SAM2VideoPredictor, same clip + weights.

For 1 and 3 objects (point prompts on frame 0) it measures, in one process and one run:
  * seconds per propagated frame (mean over the frames after the first),
  * time to the first streamed frame (propagation start -> first frame out),
  * fidelity: mask IoU against the reference on every frame and object (mean and min),
  * re-propagation after a correction (a second point for object 1 on the middle frame, then
    the whole clip again): seconds per frame, where our session reuses its cached frame
    features and the reference re-encodes every frame,
for the reference (`init_state` + `propagate_in_video`) and for our tracker at each
requested precision. Weights are the real architecture with seeded random values. Also
prints the CPU's bf16/int8 flags and the machine's load average around each run.

    PYTHONPATH=$PWD python bench/video.py --frames 8 --precision fp32 bf16 fast [--device cpu]

`fast` is `SAM2SERVE_VIDEO_PRECISION=fast`: the image runtime's OpenVINO encoder, memory
attention and memory encoder as OpenVINO graphs (`--runtime auto|openvino-bf16|openvino-f32`);
`fast-f32` / `fast-bf16` force that OpenVINO precision (f32 is what a CPU without native bf16
gets; on a CPU with it, that row shows the f32 graphs, not such a CPU's speed).
`--model test_tiny` uses the small 256 px test architecture (quick smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sam2serve.config import Settings
from sam2serve.runtime.cpu import FAST_PATH_FLAGS, fast_path_flags
from sam2serve.runtime.factory import video_parts
from sam2serve.runtime.video_tracker import VideoTracker, build_video_model
from sam2serve.testing import registry_with_test_model, write_random_checkpoint
from sam2serve.video.frames import _decoded, decode_video
from sam2serve.video.synthetic import (
    CORRECTION_POINT,
    OBJECT_POINTS,
    synthetic_frames,
    write_mp4,
)

#: the model's parts a propagated frame runs through (everything else is bookkeeping)
PARTS = ("image_encoder", "memory_attention", "sam_mask_decoder", "memory_encoder")

Masks = dict[int, np.ndarray]  # frame index -> (objects, H, W) bool


@contextlib.contextmanager
def part_clock(model: torch.nn.Module, tracker: VideoTracker | None = None) -> Iterator[Counter]:
    """Seconds spent in each of `PARTS` (forward hooks) while the block runs; a tracker's
    runtime encoder (`embed`, outside the model) counts as the image encoder."""
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
    embed = tracker.embed if tracker is not None else None
    if tracker is not None and embed is not None:

        def timed(rgb: np.ndarray) -> Any:
            t0 = time.perf_counter()
            try:
                return embed(rgb)
            finally:
                spent.update({"image_encoder": time.perf_counter() - t0})

        tracker.embed = timed
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()
        if tracker is not None:
            tracker.embed = embed


def _time_stream(stream: Iterator[tuple[int, np.ndarray]], out: Masks) -> tuple[float, float, int]:
    """A frame counts as out once its GPU work is done (the reference yields CUDA tensors)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    stamps = []
    for idx, masks in stream:
        sync()
        stamps.append(time.perf_counter())
        out[idx] = masks
    first = stamps[0] - started
    per_frame = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return first, per_frame, len(stamps)


def _row(first: float, per_frame: float, n: int, parts: Counter) -> dict[str, Any]:
    return {"first_frame_s": first, "per_frame_s": per_frame, "frames": n, "parts_s": dict(parts)}


def bench_reference(model, folder: Path, objects: int, device: torch.device) -> dict:  # type: ignore[no-untyped-def]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    masks: Masks = {}
    again: Masks = {}

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        for idx, _, logits in model.propagate_in_video(state):
            yield idx, (logits[:, 0] > 0).cpu().numpy()

    with autocast or torch.inference_mode():
        state = model.init_state(str(folder))
        for obj in range(objects):
            model.add_new_points_or_box(
                state, 0, obj + 1, points=np.array([OBJECT_POINTS[obj]]), labels=np.array([1])
            )
        with part_clock(model) as parts:
            row = _row(*_time_stream(stream(), masks), parts)
        middle = state["num_frames"] // 2
        model.add_new_points_or_box(
            state, middle, 1, points=np.array([CORRECTION_POINT]), labels=np.array([1])
        )
        with part_clock(model) as parts:
            row["repropagation"] = _row(*_time_stream(stream(), again), parts)
    return {**row, "masks": masks, "repropagation_masks": again}


def bench_ours(tracker: VideoTracker, clip: Path, tmp: Path, objects: int) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp))
    reader, info = decode_video(clip, out, tracker.image_size, max_frames=10_000, max_pixels=10**8)
    state = tracker.new_state(reader, info.height, info.width, 1 << 30)
    masks: Masks = {}
    again: Masks = {}

    def stream() -> Iterator[tuple[int, np.ndarray]]:
        for fm in tracker.propagate(state, None, None, False):
            yield fm.frame_index, fm.logits > 0

    for obj in range(objects):
        tracker.add_prompt(
            state, 0, obj + 1, points=np.array([OBJECT_POINTS[obj]]), labels=np.array([1])
        )
    with part_clock(tracker.model, tracker) as parts:
        row = _row(*_time_stream(stream(), masks), parts)
    store = state["cached_features"]
    before = store.misses
    tracker.add_prompt(
        state, len(reader) // 2, 1, points=np.array([CORRECTION_POINT]), labels=np.array([1])
    )
    with part_clock(tracker.model, tracker) as parts:
        row["repropagation"] = _row(*_time_stream(stream(), again), parts)
    row["repropagation"]["frames_encoded"] = store.misses - before
    return {**row, "masks": masks, "repropagation_masks": again}


def mask_iou(ours: Masks, ref: Masks) -> dict[str, float]:
    """Mask IoU vs the reference per (frame, object): mean, min, and how many are
    non-empty (both empty counts as 1.0, as in the tests)."""
    ious, nonempty = [], 0
    for idx, expected in ref.items():
        got = ours[idx]
        for obj in range(expected.shape[0]):
            a, b = got[obj], expected[obj]
            union = np.logical_or(a, b).sum()
            ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
            nonempty += bool(b.any())
    return {
        "mean_iou": float(np.mean(ious)),
        "min_iou": float(np.min(ious)),
        "nonempty": nonempty,
        "compared": len(ious),
    }


#: `fast` runners other than the --runtime one: the fast path with OpenVINO forced to a precision
FAST_RUNTIMES = {"fast-bf16": "openvino-bf16", "fast-f32": "openvino-f32"}


def _tracker(spec, ckpt, device, precision: str, cache: Path, runtime: str) -> VideoTracker:  # type: ignore[no-untyped-def]
    """fp32 (exact) | bf16 (autocast) | fast (`SAM2SERVE_VIDEO_PRECISION=fast`, image runtime
    `runtime`) | fast-bf16 | fast-f32: each on its own model (the fast path swaps modules)."""
    model = build_video_model(spec, ckpt, device)
    if not precision.startswith("fast"):
        return VideoTracker(spec.model_id, model, device, precision)
    from sam2serve.runtime.openvino_runtime import load_runtime

    runtime = FAST_RUNTIMES.get(precision, runtime)

    settings = Settings(runtime=runtime, runtime_cache_dir=cache)
    key = (spec.model_id, runtime)
    if key not in _RUNTIMES:
        forced = runtime.removeprefix("openvino-") if runtime.startswith("openvino-") else "auto"
        _RUNTIMES[key] = load_runtime(spec, ckpt, cache, forced)  # type: ignore[arg-type]
    parts = video_parts(settings, spec, ckpt, device)
    return VideoTracker(
        spec.model_id, model, device, "fp32", embed=_RUNTIMES[key].embed, parts=parts
    )


_RUNTIMES: dict = {}


def _measured(fn: Callable[..., dict], *args: Any) -> dict:
    """fn(*args), with the 1-minute load average before and after."""
    load_before = os.getloadavg()[0]
    out = fn(*args)
    out["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "bf16", "fast"],
        help="fp32 | bf16 | fast | fast-bf16 | fast-f32",
    )
    parser.add_argument("--runtime", default="auto", help="image runtime of `fast`")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="runtime cache (exports kept across runs)"
    )
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
    cache = args.cache_dir or tmp / "ov-cache"
    trackers = {p: _tracker(spec, ckpt, device, p, cache, args.runtime) for p in args.precision}
    if device.type == "cuda":  # kernels, cuDNN autotuning and allocator warm-up, untimed
        bench_reference(model, folder, 1, device)
    rows = []
    for objects in args.objects:
        ref = _measured(bench_reference, model, folder, objects, device)
        ref_masks, ref_again = ref.pop("masks"), ref.pop("repropagation_masks")
        rows.append({"runner": "SAM2VideoPredictor (reference)", "objects": objects, **ref})
        for precision, tracker in trackers.items():
            ours = _measured(bench_ours, tracker, clip, tmp, objects)
            masks, again = ours.pop("masks"), ours.pop("repropagation_masks")
            ours["ratio"] = ours["per_frame_s"] / ref["per_frame_s"]
            ours["fidelity"] = mask_iou(masks, ref_masks)
            rep = ours["repropagation"]
            rep["ratio"] = rep["per_frame_s"] / ref["repropagation"]["per_frame_s"]
            rep["fidelity"] = mask_iou(again, ref_again)
            rows.append({"runner": f"sam2serve {precision}", "objects": objects, **ours})
            if tracker.parts is not None:
                rows[-1]["parts"] = tracker.describe()
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "model": spec.model_id,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "cpu_flags": fast_path_flags(),
        "threads": torch.get_num_threads(),
        "frames": args.frames,
        "rows": rows,
    }
    print(json.dumps(result, indent=1))
    _print_tables(rows)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


def _print_tables(rows: list[dict]) -> None:
    print(f"CPU flags: {' '.join(fast_path_flags()) or 'none of ' + ', '.join(FAST_PATH_FLAGS)}")
    print("| runner | objects | s / frame | first frame s | vs reference | mean / min IoU | load |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "1.00x"
        fid = r.get("fidelity")
        iou = f"{fid['mean_iou']:.4f} / {fid['min_iou']:.4f}" if fid else "-"
        load = " -> ".join(str(x) for x in r["load_1min"])
        print(
            f"| {r['runner']} | {r['objects']} | {r['per_frame_s']:.3f} | "
            f"{r['first_frame_s']:.3f} | {ratio} | {iou} | {load} |"
        )
    print()
    print("Re-propagation after a correction (whole clip again):")
    print("| runner | objects | s / frame | vs reference | frames encoded | mean / min IoU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rep = r["repropagation"]
        ratio = f"{rep['ratio']:.2f}x" if "ratio" in rep else "1.00x"
        fid = rep.get("fidelity")
        iou = f"{fid['mean_iou']:.4f} / {fid['min_iou']:.4f}" if fid else "-"
        encoded = rep.get("frames_encoded", rep["frames"])
        print(
            f"| {r['runner']} | {r['objects']} | {rep['per_frame_s']:.3f} | {ratio} | "
            f"{encoded} | {iou} |"
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


if __name__ == "__main__":
    main()
