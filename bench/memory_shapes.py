"""Resident memory of a runtime over many distinct prompt shapes, and what a click costs.

Embeds one image, then decodes every (prompts, points) shape for 1..`--prompts` prompts x
1..`--points` points once (one decode each, best-of-3 proposals), reading RSS after each
prompt count; then a second pass over the same shapes (should stay flat), and click timings:
the median of a warm 1-prompt/1-point click, and of each shape's first click. Seeded random
weights (no download); each variant in its own process:

    python -m bench.memory_shapes --bucket off --capacity -1   # OpenVINO's defaults
    python -m bench.memory_shapes                              # what the server runs
    python -m bench.memory_shapes --runtime torch

Prints one JSON line. The memory tests run it on the tiny test architecture.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam2serve.runtime.base import PromptBatch
from sam2serve.runtime.memory import rss_bytes

MiB = 1024 * 1024


def _batch(n: int, k: int, rng: np.random.Generator) -> PromptBatch:
    coords = rng.uniform(10, 470, size=(n, k, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=(n, k)).astype(np.int32)
    return PromptBatch(coords=coords, labels=labels)


def _ms(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _rss_mib() -> float:
    gc.collect()
    return (rss_bytes() or 0) / MiB


def measure(runtime: Any, prompts: int, points: int) -> dict[str, Any]:
    """The measurement itself, on a loaded runtime."""
    rng = np.random.default_rng(0)
    features = runtime.embed(rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8))
    warm = _batch(1, 1, rng)
    for _ in range(3):
        runtime.decode(features, warm, True)
    warm_ms = statistics.median(
        _ms(lambda: runtime.decode(features, warm, True)) for _ in range(15)
    )
    start = _rss_mib()
    shapes = [(n, k) for n in range(1, prompts + 1) for k in range(1, points + 1)]
    first_ms, per_prompt_count = [], []
    for n, k in shapes:
        batch = _batch(n, k, rng)
        first_ms.append(_ms(lambda b=batch: runtime.decode(features, b, True)))
        if k == points:
            per_prompt_count.append(round(_rss_mib() - start, 1))
    for n, k in shapes:
        runtime.decode(features, _batch(n, k, rng), True)
    return {
        "shapes": len(shapes),
        "rss_start_mib": round(start),
        "growth_mib_after_each_prompt_count": per_prompt_count,
        "growth_mib_after_second_pass": round(_rss_mib() - start, 1),
        "warm_click_ms": round(warm_ms, 2),
        "first_click_of_a_shape_median_ms": round(statistics.median(first_ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1_hiera_tiny", help="or test_tiny")
    parser.add_argument("--weights-dir", type=Path, default=Path("/tmp/sam2serve-bench/weights"))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/sam2serve-bench/runtime"))
    parser.add_argument("--runtime", default="openvino", choices=["openvino", "torch"])
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="decoder's CPU runtime cache entries; -1 = OpenVINO's default; unset = shipped",
    )
    parser.add_argument("--bucket", default="on", choices=["on", "off"], help="padded shapes")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch/OpenVINO threads; 0 = all")
    args = parser.parse_args()

    from sam2serve.runtime import openvino_runtime as ovr
    from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
    from sam2serve.testing import registry_with_test_model, write_random_checkpoint

    spec = registry_with_test_model()[args.model]
    checkpoint = args.weights_dir / spec.filename
    if not checkpoint.is_file():
        write_random_checkpoint(spec, args.weights_dir, seed=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, Any] = {}
    if args.runtime == "torch":
        cpu = torch.device("cpu")
        runtime: Any = TorchRuntime(spec.model_id, build_model(spec, checkpoint, cpu), cpu)
    else:
        options["bucket_shapes"] = args.bucket == "on"
        if args.capacity is not None:
            options["decode_cache_capacity"] = None if args.capacity < 0 else args.capacity
        runtime = ovr.load_runtime(
            spec, checkpoint, args.cache_dir, decode_threads=args.threads, **options
        )
    result = {
        "model": spec.model_id,
        "runtime": args.runtime,
        "bucket": options.get("bucket_shapes"),
        "capacity": options.get("decode_cache_capacity", ovr.DECODE_CACHE_CAPACITY)
        if args.runtime == "openvino"
        else None,
        **measure(runtime, args.prompts, args.points),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
