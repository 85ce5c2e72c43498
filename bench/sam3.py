"""SAM 3 on CPU: Meta's `Sam3Processor` against sam2serve's SAM 3 runtimes, in one process,
interleaved round by round so outside load hits all alike:
`python -m bench.sam3 --work-dir DIR` (DIR/weights/sam3.pt: seeded random weights of the
real architecture, written on first use; DIR/runtime-cache: the fast path's trunk graph).

Reports, medians over rounds, on a 600 x 400 photo:
- set_image (Meta) vs embed (exact runtime, fp32) vs embed (fast runtime: ViT trunk on
  OpenVINO at the CPU's best precision), and their ratios to Meta's;
- a new phrase on the cached image: Meta's `set_text_prompt` vs ours (`encode_text` +
  `concept` + the masks over Meta's default 0.5 threshold); a repeated phrase (text cached);
- memory: resident set after each model loads and the peak (VmHWM), per-image feature bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import ROOT
from bench.run import machine

PHRASES = ["cup", "a red saucer", "spoon on the table", "coffee"]


def _rss_gib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = round(int(value.split()[0]) / 2**20, 2)
    return out


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="fast path: auto | bf16 | f32")
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    args = parser.parse_args()
    import skimage.data
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor
    from sam3.model_builder import build_sam3_image_model

    from sam2serve.registry import SAM3_REGISTRY
    from sam2serve.runtime.sam3_build import REAL, bpe_path
    from sam2serve.runtime.sam3_device import on_device
    from sam2serve.runtime.sam3_fast import (
        Sam3FastRuntime,
        build_sam3_fast_runtime,
        cache_dir_for,
        compile_trunk,
    )
    from sam2serve.runtime.sam3_runtime import build_sam3_runtime

    spec = SAM3_REGISTRY["sam3"]
    checkpoint = args.work_dir / "weights" / spec.filename
    if not checkpoint.exists():
        from sam2serve.testing import write_random_sam3_checkpoint

        write_random_sam3_checkpoint(spec, checkpoint.parent, seed=1)
    cpu = torch.device("cpu")
    memory: dict[str, Any] = {"start": _rss_gib()}
    load: dict[str, float] = {}

    started = time.perf_counter()
    with on_device(cpu):
        meta = build_sam3_image_model(
            bpe_path=str(bpe_path()),
            device="cpu",
            checkpoint_path=str(checkpoint),
            load_from_HF=False,
        )
        processor = Sam3Processor(meta, device="cpu")
    load["meta_build_and_load_s"] = time.perf_counter() - started
    memory["after_meta_model"] = _rss_gib()

    started = time.perf_counter()
    exact = build_sam3_runtime(spec, checkpoint, cpu)
    load["exact_build_and_load_s"] = time.perf_counter() - started
    memory["after_exact_runtime"] = _rss_gib()

    started = time.perf_counter()
    cache = args.work_dir / "runtime-cache"
    probe_rt = None
    if not (cache_dir_for(spec, checkpoint, cache) / "meta.json").is_file():
        probe_rt = build_sam3_fast_runtime(spec, checkpoint, cache, args.precision)
    load["fast_export_s"] = time.perf_counter() - started
    started = time.perf_counter()
    if probe_rt is None:
        probe_rt = build_sam3_fast_runtime(spec, checkpoint, cache, args.precision)
    precision = probe_rt.precision
    compiled = compile_trunk(cache_dir_for(spec, checkpoint, cache), precision)
    fast = Sam3FastRuntime(spec.model_id, exact.model, compiled, precision)  # shares weights
    del probe_rt
    load["fast_compile_s"] = time.perf_counter() - started
    memory["after_fast_runtime"] = _rss_gib()

    rgb = np.ascontiguousarray(skimage.data.coffee())  # 400 x 600
    pil = Image.fromarray(rgb)
    with on_device(cpu):  # warm-ups
        state = processor.set_image(pil)
    features = exact.embed(rgb)
    fast.embed(rgb)

    times: dict[str, list[float]] = {
        k: []
        for k in (
            "meta_set_image",
            "exact_embed",
            "fast_embed",
            "meta_set_text_prompt",
            "ours_new_phrase",
            "ours_repeated_phrase",
        )
    }
    boxes, labels = np.zeros((0, 4)), np.zeros(0, bool)
    for r in range(args.rounds):
        with on_device(cpu):
            times["meta_set_image"].append(_timed(lambda: processor.set_image(pil, state)))
        times["exact_embed"].append(_timed(lambda: exact.embed(rgb)))
        times["fast_embed"].append(_timed(lambda: fast.embed(rgb)))
        for phrase in PHRASES:
            phrase = f"{phrase} {r}"  # new to both sides
            processor.reset_all_prompts(state)
            with on_device(cpu):
                times["meta_set_text_prompt"].append(
                    _timed(lambda p=phrase: processor.set_text_prompt(p, state))
                )

            def ours(p: str = phrase) -> Any:
                [text] = exact.encode_text([p])
                out = exact.concept(features, text, boxes, labels)
                exact.masks(features, out, np.flatnonzero(out.scores > 0.5))
                return text

            holder: list[Any] = []
            times["ours_new_phrase"].append(_timed(lambda h=holder: h.append(ours())))
            text = holder[0]

            def repeated(t: Any = text) -> None:
                out = exact.concept(features, t, boxes, labels)
                exact.masks(features, out, np.flatnonzero(out.scores > 0.5))

            times["ours_repeated_phrase"].append(_timed(repeated))
    memory["peak"] = _rss_gib()["VmHWM"]

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "image": "skimage coffee, 600 x 400",
        "weights": "seeded random, real SAM 3 image architecture (~840 M parameters)",
        "fast_precision": precision,
        "rounds": args.rounds,
        "load": load,
        "median_s": med,
        "ratios": {
            "exact_embed / meta_set_image": med["exact_embed"] / med["meta_set_image"],
            "fast_embed / meta_set_image": med["fast_embed"] / med["meta_set_image"],
            "new_phrase / meta_set_text_prompt": med["ours_new_phrase"]
            / med["meta_set_text_prompt"],
            "repeated_phrase / meta_set_text_prompt": med["ours_repeated_phrase"]
            / med["meta_set_text_prompt"],
        },
        "feature_bytes_per_image": {"fp32": REAL.feature_nbytes(), "packed": 4 * 1024 * 72 * 72},
        "memory_gib": memory,
        "all_s": times,
    }
    out = args.out or ROOT / "bench" / "results" / f"{date.today().isoformat()}-sam3.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_s", "ratios", "memory_gib")}, indent=1))


if __name__ == "__main__":
    main()
