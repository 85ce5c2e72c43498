"""The torch runtime on CUDA against Meta's SAM2ImagePredictor on the same GPU and weights.

    python -m bench.gpu [--models sam2.1_hiera_tiny sam2.1_hiera_large] [--out FILE.json]

For each model (seeded random weights in Meta's checkpoint format): Meta's predictor in fp32
and under bf16 autocast (as Meta's notebooks run it), and our torch runtime (bf16 autocast on
CUDA): set_image / embed medians, one-prompt predict / decode medians, a micro-batch of 4
embeds, and final-mask IoU of our masks against both reference precisions on 20 seeded
prompts x 3 photos. Prints one JSON document; every loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.fidelity import compare, reference_masks, runtime_masks, seeded_prompts
from sam2serve.registry import REGISTRY
from sam2serve.runtime.base import PromptBatch
from sam2serve.runtime.torch_runtime import TorchRuntime, build_model
from sam2serve.testing import write_random_checkpoint


def _photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {n: getattr(skimage.data, n)() for n in ("astronaut", "coffee", "chelsea")}


def _median_s(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _measure(model_id: str, weights: Path, photos: dict[str, np.ndarray]) -> dict[str, object]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    spec = REGISTRY[model_id]
    ckpt = write_random_checkpoint(spec, weights, seed=1)
    device = torch.device("cuda")
    runtime = TorchRuntime(model_id, build_model(spec, ckpt, device), device)
    predictor = SAM2ImagePredictor(build_model(spec, ckpt, device))
    rgb = photos["coffee"]
    h, w = rgb.shape[:2]
    point = PromptBatch(np.array([[[w / 2, h / 2]]], np.float32), np.array([[1]], np.int32))

    def ref_predict() -> object:
        return predictor.predict(np.array([[w / 2, h / 2]]), np.array([1]), multimask_output=True)

    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    out: dict[str, object] = {"model": model_id}
    for name, ctx in (("ref_fp32", contextlib.nullcontext), ("ref_bf16", bf16)):
        with ctx():
            out[f"{name}_set_image_s"] = _median_s(lambda: predictor.set_image(rgb), 10)
            out[f"{name}_predict_s"] = _median_s(ref_predict, 30)
    features = runtime.embed(rgb)
    out["ours_embed_s"] = _median_s(lambda: runtime.embed(rgb), 10)
    out["ours_decode_s"] = _median_s(lambda: runtime.decode(features, point, True), 30)
    batch = [photos[n] for n in ("astronaut", "coffee", "chelsea", "coffee")]
    out["ours_embed_batch4_s"] = _median_s(lambda: runtime.embed_batch(batch), 5)

    ious: dict[str, list[float]] = {"vs_ref_fp32": [], "vs_ref_bf16": []}
    for seed, photo in enumerate(photos.values()):
        prompts = seeded_prompts(*photo.shape[:2], seed=seed)
        ours = runtime_masks(runtime, photo, prompts)
        ref32 = reference_masks(predictor, photo, prompts)
        with bf16():
            ref16 = reference_masks(predictor, photo, prompts)
        ious["vs_ref_fp32"] += compare(ref32, ours)
        ious["vs_ref_bf16"] += compare(ref16, ours)
    for key, values in ious.items():
        out[f"iou_{key}_mean"] = float(np.mean(values))
        out[f"iou_{key}_min"] = float(np.min(values))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["sam2.1_hiera_tiny", "sam2.1_hiera_large"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    photos = _photos()
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for model_id in args.models:
            results["runs"].append(_measure(model_id, Path(tmp), photos))
            print(json.dumps(results["runs"][-1]), flush=True)
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
