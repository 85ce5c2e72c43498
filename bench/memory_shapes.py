"""Resident memory of the fast runtime over many distinct prompt shapes, and the cost of a click.

Embeds one image, then decodes `--prompts` x `--points` distinct (prompts, points) shapes
(one request each, best-of-3), reading RSS after each; then a second pass over the same
shapes (must stay flat), and click timings for a warm shape and for a never-seen shape.
Seeded random hiera_tiny weights (no download). Each variant runs in its own process:

    python -m bench.memory_shapes --capacity 0 --bucket off     # what OpenVINO does by default
    python -m bench.memory_shapes                               # the shipped settings

Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from sam2serve.memory import rss_bytes
from sam2serve.registry import REGISTRY
from sam2serve.runtime.base import PromptBatch

MiB = 1024 * 1024


def _batch(n: int, k: int, rng: np.random.Generator) -> PromptBatch:
    coords = rng.uniform(10, 500, size=(n, k, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(n, k)).astype(np.int32)
    return PromptBatch(coords=coords, labels=labels)


def _click_ms(runtime: object, features: object, batch: PromptBatch, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        runtime.decode(features, batch, True)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sam2serve-bench-shapes"))
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "torch"])
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="decoder's CPU runtime cache entries; -1 = OpenVINO's default (5000); "
        "unset = the shipped DECODE_CACHE_CAPACITY",
    )
    parser.add_argument("--bucket", default="on", choices=["on", "off"])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--points", type=int, default=40)
    args = parser.parse_args()

    from sam2serve.runtime import openvino_runtime
    from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
    from sam2serve.testing import write_random_checkpoint

    spec = REGISTRY["sam2.1_hiera_tiny"]
    checkpoint = args.work / "weights" / spec.filename
    if not checkpoint.is_file():
        write_random_checkpoint(spec, checkpoint.parent, seed=1)
    if args.runtime == "torch":
        import torch

        runtime = TorchRuntime(
            spec.model_id, build_model(spec, checkpoint, torch.device("cpu")), torch.device("cpu")
        )
    else:
        kwargs = {"bucket_shapes": args.bucket == "on"}
        if args.capacity is not None:
            kwargs["decode_cache_capacity"] = None if args.capacity < 0 else args.capacity
        runtime = openvino_runtime.load_runtime(spec, checkpoint, args.work / "runtime", **kwargs)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    features = runtime.embed(rgb)
    warm = _batch(1, 1, rng)
    warm_ms = _click_ms(runtime, features, warm, 20)
    gc.collect()
    start = rss_bytes() or 0
    shapes = [(n, k) for n in range(1, args.prompts + 1) for k in range(1, args.points + 1)]
    first_ms = []
    trace = []
    for n, k in shapes:
        started = time.perf_counter()
        runtime.decode(features, _batch(n, k, rng), True)
        first_ms.append((time.perf_counter() - started) * 1000)
        trace.append(((rss_bytes() or 0) - start) / MiB)
    after_first = trace[-1]
    for n, k in shapes:
        runtime.decode(features, _batch(n, k, rng), True)
    gc.collect()
    after_second = ((rss_bytes() or 0) - start) / MiB
    print(
        json.dumps(
            {
                "runtime": args.runtime,
                "capacity": (
                    openvino_runtime.DECODE_CACHE_CAPACITY
                    if args.capacity is None
                    else "default"
                    if args.capacity < 0
                    else args.capacity
                ),
                "bucket": args.bucket,
                "shapes": len(shapes),
                "rss_start_mib": round(start / MiB),
                "growth_after_40_mib": round(trace[min(39, len(trace) - 1)], 1),
                "growth_first_pass_mib": round(after_first, 1),
                "growth_second_pass_mib": round(after_second, 1),
                "warm_click_1x1_ms": round(warm_ms, 2),
                "warm_click_1x1_after_ms": round(_click_ms(runtime, features, warm, 20), 2),
                "new_shape_click_median_ms": round(statistics.median(first_ms), 1),
                "machine": platform.processor() or platform.machine(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
