"""Where one SAM 3 phrase's time goes: `python -m bench.sam3_profile --work-dir DIR [--tiny]`.

Runs the work of `Sam3Processor.set_text_prompt` on a cached image (text encoder + concept
heads + masks over 0.5) through the exact runtime (the same Meta modules in the same order)
with a wall-clock timer around each submodule of interest (forward hooks: inclusive times,
so nested rows add up to their parent), then torch.profiler's top operators. The image's
features are embedded once and kept in DIR (`coffee-<config>.s3ft`) so repeated profiles
skip the ViT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Submodules timed (dotted paths under the SAM 3 image model; `*` = every layer).
MODULES = [
    "backbone.language_backbone",
    "geometry_encoder",
    "transformer.encoder",
    "transformer.encoder.layers.*.self_attn",
    "transformer.encoder.layers.*.cross_attn_image",
    "transformer.encoder.layers.*.linear1",
    "transformer.encoder.layers.*.linear2",
    "transformer.decoder",
    "transformer.decoder.layers.*.self_attn",
    "transformer.decoder.layers.*.cross_attn",
    "transformer.decoder.layers.*.ca_text",
    "transformer.decoder.layers.*.linear1",
    "dot_prod_scoring",
    "segmentation_head",
    "segmentation_head.cross_attend_prompt",
    "segmentation_head.pixel_decoder",
    "segmentation_head.pixel_decoder.conv_layers.*",
    "segmentation_head.pixel_decoder.norms.*",
    "segmentation_head.instance_seg_head",
    "segmentation_head.semantic_seg_head",
    "segmentation_head.mask_predictor",
]


def _resolve(model: torch.nn.Module, pattern: str) -> list[tuple[str, torch.nn.Module]]:
    found = []
    for name, module in model.named_modules():
        parts, want = name.split("."), pattern.split(".")
        if len(parts) == len(want) and all(w in ("*", p) for p, w in zip(parts, want, strict=True)):
            found.append((name, module))
    return found


class HookTimer:
    """Inclusive wall time per pattern, summed over the matching modules and calls."""

    def __init__(self, model: torch.nn.Module, patterns: list[str]) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._starts: dict[int, float] = {}
        self._handles = []
        for pattern in patterns:
            for _, module in _resolve(model, pattern):
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(
                    module.register_forward_hook(lambda m, i, o, p=pattern: self._post(m, p))
                )

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        self._starts[id(module)] = time.perf_counter()

    def _post(self, module: torch.nn.Module, pattern: str) -> None:
        self.totals[pattern] += time.perf_counter() - self._starts.pop(id(module))

    def reset(self) -> None:
        self.totals.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", choices=["exact", "fast", "int8"], default="exact")
    parser.add_argument("--ops", action="store_true", help="also torch.profiler's operator table")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import skimage.data

    from bench.sam3 import bench_checkpoint
    from sam2serve.runtime.sam3_runtime import build_sam3_runtime
    from sam2serve.runtime.sam3_types import Sam3Features

    spec, checkpoint = bench_checkpoint(args.work_dir, tiny=args.tiny)
    runtime: Any = build_sam3_runtime(spec, checkpoint, torch.device("cpu"))
    if args.runtime == "fast":
        from sam2serve.runtime.sam3_fast import Sam3FastRuntime

        runtime = Sam3FastRuntime(spec.model_id, runtime.model, runtime.device)
    elif args.runtime == "int8":  # the int8 path `auto` picks on this CPU kind
        from sam2serve.runtime import sam3_int8
        from sam2serve.runtime.sam3_fast import native_bf16

        kind = sam3_int8.Sam3Int8Runtime if native_bf16() else sam3_int8.Sam3Int8Fp32Runtime
        runtime = kind(spec.model_id, runtime.model, runtime.device)
    rgb = np.ascontiguousarray(skimage.data.coffee())
    cached = args.work_dir / f"coffee-{spec.config}.s3ft"
    if cached.exists():
        features = Sam3Features.from_bytes(cached.read_bytes())
    else:
        started = time.perf_counter()
        features = runtime.embed(rgb)
        print(f"embed {time.perf_counter() - started:.1f} s")
        cached.write_bytes(features.to_bytes())

    timer = HookTimer(runtime.model, MODULES)
    none = (np.zeros((0, 4)), np.zeros(0, bool))
    rows: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds + 1):  # round 0 warms up
        timer.reset()
        t0 = time.perf_counter()
        [text] = runtime.encode_text([f"cup on a saucer {r}"])
        t1 = time.perf_counter()
        out = runtime.concept(features, text, *none)
        t2 = time.perf_counter()
        keep = np.flatnonzero(out.scores > float(np.median(out.scores)))[:8]
        runtime.masks(features, out, keep)
        t3 = time.perf_counter()
        if r == 0:
            continue
        rows["total (new phrase)"].append(t3 - t0)
        rows["encode_text"].append(t1 - t0)
        rows["concept (heads)"].append(t2 - t1)
        rows[f"masks ({len(keep)} kept, full size)"].append(t3 - t2)
        for key, value in timer.totals.items():
            rows[key].append(value)
    timer.remove()
    table = {k: statistics.median(v) for k, v in rows.items()}
    total = table["total (new phrase)"]
    print(f"{'part':60s} {'s':>8s} {'share':>6s}")
    for key, value in table.items():
        print(f"{key:60s} {value:8.3f} {value / total:6.1%}")
    result: dict[str, Any] = {"config": spec.config, "runtime": args.runtime, "median_s": table}
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = runtime.concept(features, text, *none)
        ops = prof.key_averages(group_by_input_shape=True)
        print(ops.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=40))
        result["ops"] = [
            {
                "op": e.key,
                "shapes": str(e.input_shapes)[:200],
                "self_s": e.self_cpu_time_total / 1e6,
                "count": e.count,
            }
            for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:30]
        ]
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
