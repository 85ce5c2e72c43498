"""SAM 3 on CPU: Meta's `Sam3Processor` against sam2serve's SAM 3 runtimes, in one process,
interleaved round by round so outside load hits all alike:
`python -m bench.sam3 --work-dir DIR` (DIR/weights/sam3.pt: seeded random weights of the
real architecture, written on first use).

Reports, medians over rounds, on a 600 x 400 photo:
- set_image (Meta) vs embed (exact runtime, fp32) vs embed (fast runtime: bf16 autocast,
  on a CPU with native bf16) vs embed (int8 runtime: the trunk's linears in int8, on a CPU
  with native bf16 + VNNI), and their ratios to Meta's;
- each fast runtime's error against the exact one: the trunk output's relative L2 error, the
  concept scores' largest absolute error and the smallest IoU of the top-decile masks (one
  phrase + one box, the tests' measure);
- a new phrase on the cached image: Meta's `set_text_prompt` vs ours (`encode_text` +
  `concept` + the masks over Meta's default 0.5 threshold); a repeated phrase (text cached);
  a repeated phrase on the cached image as the server answers it again (the `ConceptCache`
  lookup hit + the same masks: no text encoder, fusion encoder or decoder);
- memory: resident set after each model loads and the peak (VmHWM), per-image feature bytes;
- the load average before and after each round (the box is shared: only ratios count).

`--keep-top K`: our side returns the K best queries' masks (seeded random weights put
every score under Meta's 0.5, so without it no mask is ever made); `--phrases-only` skips
the timed set_image / embed rounds (one warm-up embed per side, then phrases only: the
heads' bench); `--phrases N` phrases per round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.report import ROOT
from bench.run import machine

PHRASES = ["cup", "a red saucer", "spoon on the table", "coffee"]
#: the phrase timings per runtime, each also as a ratio to Meta's set_text_prompt
PHRASE_ROWS = ("new_phrase", "repeated_phrase", "concept_cache_hit")


def _rss_gib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            out[key] = round(int(value.split()[0]) / 2**20, 2)
    return out


def bench_checkpoint(work_dir: Path, *, tiny: bool) -> tuple[Any, Path]:
    """SAM 3's spec (the real architecture, or the tiny one) and its seeded random
    checkpoint under `work_dir`/weights, written on first use (seed 1, as every SAM 3 bench)."""
    from sam2serve.registry import SAM3_REGISTRY
    from sam2serve.testing import sam3_tiny_spec, write_random_sam3_checkpoint

    spec = sam3_tiny_spec() if tiny else SAM3_REGISTRY["sam3"]
    checkpoint = work_dir / "weights" / spec.filename
    if not checkpoint.exists():
        write_random_sam3_checkpoint(spec, checkpoint.parent, seed=1)
    return spec, checkpoint


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


class SmallOpThreads:
    """A runtime whose text encoder and decoder run with `n` intra-op threads (the rest with
    the process's count): an experiment, not shipped. On a shared box every OpenMP parallel
    region waits for descheduled threads, which costs the many small ops of these two parts
    far more than their parallel speedup gives. `torch.set_num_threads` is process-wide,
    which is why the server does not do this (it would throttle concurrent requests)."""

    def __init__(self, runtime: Any, n: int) -> None:
        self.runtime, self.n = runtime, n
        model = runtime.model
        self.parts = (model.backbone.language_backbone, model.transformer.decoder)

    @contextlib.contextmanager
    def _scoped(self) -> Iterator[None]:
        before = torch.get_num_threads()
        handles = []
        for part in self.parts:
            handles.append(part.register_forward_pre_hook(lambda *_: torch.set_num_threads(self.n)))
            handles.append(part.register_forward_hook(lambda *_: torch.set_num_threads(before)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            torch.set_num_threads(before)

    def embed(self, rgb: np.ndarray) -> Any:
        return self.runtime.embed(rgb)

    def encode_text(self, phrases: list[str]) -> Any:
        with self._scoped():
            return self.runtime.encode_text(phrases)

    def concept(self, *args: Any) -> Any:
        with self._scoped():
            return self.runtime.concept(*args)

    def masks(self, *args: Any) -> Any:
        return self.runtime.masks(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results JSON path")
    parser.add_argument(
        "--small-op-threads",
        type=int,
        default=0,
        help="also a fast variant whose text encoder and decoder (many small ops) run on N threads",
    )
    parser.add_argument(
        "--keep-top",
        type=int,
        default=0,
        help="our side returns the masks of the K best queries, not those over 0.5",
    )
    parser.add_argument("--phrases-only", action="store_true", help="skip the timed embeds")
    parser.add_argument("--phrases", type=int, default=len(PHRASES), help="phrases per round")
    parser.add_argument(
        "--embed-only", action="store_true", help="skip the phrase timings (embeds + fidelity)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run on the tiny architecture (no Meta builder)"
    )
    args = parser.parse_args()
    load_start = os.getloadavg()
    import skimage.data
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor
    from sam3.model_builder import build_sam3_image_model

    from sam2serve.runtime.sam3_build import bpe_path
    from sam2serve.runtime.sam3_device import on_device
    from sam2serve.runtime.sam3_fast import Sam3FastRuntime, native_bf16
    from sam2serve.runtime.sam3_int8 import (
        Sam3Int8Fp32Runtime,
        Sam3Int8Runtime,
        int8_available,
    )
    from sam2serve.runtime.sam3_runtime import build_sam3_runtime, config_for, load_model
    from sam2serve.sam3.concept_cache import ConceptCache, ConceptKey
    from sam2serve.store.keys import EntryKey

    spec, checkpoint = bench_checkpoint(args.work_dir, tiny=args.tiny)
    cpu = torch.device("cpu")
    memory: dict[str, Any] = {"start": _rss_gib()}
    load: dict[str, float] = {}

    started = time.perf_counter()
    with on_device(cpu):
        if args.tiny:  # Meta's builder has the real sizes only: its classes, our sizes
            meta = load_model(spec, checkpoint, cpu)
        else:
            meta = build_sam3_image_model(
                bpe_path=str(bpe_path()),
                device="cpu",
                checkpoint_path=str(checkpoint),
                load_from_HF=False,
            )
        size = int(config_for(spec).image_size)
        processor = Sam3Processor(meta, resolution=size, device="cpu")
    load["meta_build_and_load_s"] = time.perf_counter() - started
    memory["after_meta_model"] = _rss_gib()

    started = time.perf_counter()
    exact = build_sam3_runtime(spec, checkpoint, cpu)
    load["exact_build_and_load_s"] = time.perf_counter() - started
    memory["after_exact_runtime"] = _rss_gib()

    runtimes: dict[str, Any] = {"exact": exact}
    if native_bf16():  # shares the exact runtime's weights
        runtimes["fast_bf16"] = Sam3FastRuntime(spec.model_id, exact.model, cpu)
        if args.small_op_threads:
            runtimes["fast_bf16_small_t1"] = SmallOpThreads(
                runtimes["fast_bf16"], args.small_op_threads
            )
    if int8_available(cpu):  # shares them too, plus its int8 copy of the trunk's linears
        int8 = Sam3Int8Runtime if native_bf16() else Sam3Int8Fp32Runtime  # as `auto` picks
        runtimes["fast_int8"] = int8(spec.model_id, exact.model, cpu)
    memory["after_fast_runtimes"] = _rss_gib()

    rgb = np.ascontiguousarray(skimage.data.coffee())  # 400 x 600
    pil = Image.fromarray(rgb)
    with on_device(cpu):  # warm-ups
        state = processor.set_image(pil)
    hw = (int(rgb.shape[0]), int(rgb.shape[1]))
    measured = {n: rt for n, rt in runtimes.items() if n != "fast_bf16_small_t1"}
    trunks = {name: rt.trunk(rgb) for name, rt in measured.items()}
    features = {name: rt.expand(trunks[name], hw) for name, rt in measured.items()}
    if "fast_bf16_small_t1" in runtimes:
        features["fast_bf16_small_t1"] = features["fast_bf16"]
    fidelity = _fidelity(measured, trunks, features)
    print(json.dumps({"fidelity": fidelity}), flush=True)

    times: dict[str, list[float]] = {"meta_set_image": [], "meta_set_text_prompt": []}
    for name in runtimes:
        for what in ("embed", *PHRASE_ROWS):
            times[f"{name}_{what}"] = []
    boxes, labels = np.zeros((0, 4)), np.zeros(0, bool)
    # the server's concept cache, roomy enough that every phrase's lookup is a hit
    concepts = ConceptCache(len(runtimes) * args.phrases + 1, 1 << 40)
    loadavg: list[dict[str, Any]] = []
    for r in range(args.rounds):
        before = os.getloadavg()[0]
        if not args.phrases_only:
            with on_device(cpu):
                times["meta_set_image"].append(_timed(lambda: processor.set_image(pil, state)))
            for name, rt in runtimes.items():
                times[f"{name}_embed"].append(_timed(lambda rt=rt: rt.embed(rgb)))
        for phrase in [] if args.embed_only else PHRASES[: args.phrases]:
            phrase = f"{phrase} {r}"  # new to every side
            processor.reset_all_prompts(state)
            with on_device(cpu):
                times["meta_set_text_prompt"].append(
                    _timed(lambda p=phrase: processor.set_text_prompt(p, state))
                )
            for name, rt in runtimes.items():
                f = features[name]

                def answer(out: Any, rt: Any = rt, f: Any = f) -> None:
                    keep = np.flatnonzero(out.scores > 0.5)
                    if args.keep_top:  # as if K instances were found (random weights: ~none)
                        keep = np.argsort(-out.scores)[: args.keep_top]
                    rt.masks(f, out, keep)

                def concept(text: Any, rt: Any = rt, f: Any = f, answer: Any = answer) -> Any:
                    out = rt.concept(f, text, boxes, labels)
                    answer(out)
                    return out

                texts: list[Any] = []
                outs: list[Any] = []
                times[f"{name}_new_phrase"].append(
                    _timed(
                        lambda p=phrase, c=concept, t=texts, rt=rt: (
                            t.extend(rt.encode_text([p])),
                            c(t[0]),
                        )
                    )
                )
                times[f"{name}_repeated_phrase"].append(
                    _timed(lambda c=concept, t=texts, o=outs: o.append(c(t[0])))
                )
                precision = str(getattr(rt, "precision", name))
                key = ConceptKey.of(
                    EntryKey("bench", spec.model_id, name), precision, phrase, boxes, labels
                )
                concepts.put(key, f, outs[0])
                times[f"{name}_concept_cache_hit"].append(
                    _timed(lambda a=answer, k=key, f=f: a(concepts.get(k, f)))
                )
        loadavg.append({"round": r, "before": before, "after": os.getloadavg()[0]})
        print(json.dumps({"round": r, **loadavg[-1], "VmHWM_gib": _rss_gib()["VmHWM"]}))
    memory["peak"] = _rss_gib()["VmHWM"]

    med = {k: statistics.median(v) for k, v in times.items() if v}
    ratios = {}
    for name in runtimes:
        if not args.phrases_only:
            ratios[f"{name}_embed / meta_set_image"] = med[f"{name}_embed"] / med["meta_set_image"]
        for what in () if args.embed_only else PHRASE_ROWS:
            ratios[f"{name}_{what} / meta_set_text_prompt"] = (
                med[f"{name}_{what}"] / med["meta_set_text_prompt"]
            )
    # the steadier figure on a shared box: each phrase's time over Meta's for the same phrase,
    # taken back to back, then the median of those ratios
    paired = {}
    for name in runtimes:
        for what in () if args.embed_only else PHRASE_ROWS:
            per = [
                a / b
                for a, b in zip(times[f"{name}_{what}"], times["meta_set_text_prompt"], strict=True)
            ]
            paired[f"{name}_{what} / meta_set_text_prompt"] = statistics.median(per)
    # each round's own embed ratio: a load spike hits one round's sides alike, not two rounds'
    per_round = {
        f"{name}_embed / meta_set_image": [
            e / m for e, m in zip(times[f"{name}_embed"], times["meta_set_image"], strict=True)
        ]
        for name in runtimes
        if not args.phrases_only
    }
    result = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "image": "skimage coffee, 600 x 400",
        "weights": "seeded random, real SAM 3 image architecture (~840 M parameters)",
        "rounds": args.rounds,
        "phrases_per_round": args.phrases,
        "phrases_only": args.phrases_only,
        "keep_top": args.keep_top,
        "loadavg_1min": loadavg,
        "load": load,
        "median_s": med,
        "ratios": ratios,
        "paired_ratios_median": paired,
        "per_round_ratios": per_round,
        "architecture": "tiny" if args.tiny else "real",
        "feature_bytes_per_image": {
            "fp32": config_for(spec).feature_nbytes(),
            "packed": 4 * config_for(spec).vit_dim * config_for(spec).grid ** 2,
        },
        "memory_gib": memory,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "fidelity_vs_exact": fidelity,
        "all_s": times,
    }
    out = args.out or ROOT / "bench" / "results" / f"{date.today().isoformat()}-sam3.json"
    out.write_text(json.dumps(result, indent=1))
    shown = (
        "median_s",
        "ratios",
        "paired_ratios_median",
        "per_round_ratios",
        "memory_gib",
        "fidelity_vs_exact",
    )
    print(json.dumps({k: result[k] for k in shown}, indent=1))


def _fidelity(
    runtimes: dict[str, Any], trunks: dict[str, torch.Tensor], features: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Each fast runtime against the exact one on the bench photo: the trunk's relative L2
    error, one concept prompt's (phrase + a box) largest score error and the smallest IoU
    of the masks of the exact runtime's top-decile queries (random weights score every
    query in a narrow band, so a fixed threshold would keep all or none)."""
    exact = runtimes["exact"]
    want = trunks["exact"].float()
    [text] = exact.encode_text(["cup"])
    boxes, labels = np.array([[200, 100, 400, 300]]), np.array([True])
    a = exact.concept(features["exact"], text, boxes, labels)
    keep = np.flatnonzero(a.scores > np.quantile(a.scores, 0.9))
    ma = exact.masks(features["exact"], a, keep)
    out = {}
    for name, rt in runtimes.items():
        if name == "exact":
            continue
        b = rt.concept(features[name], text, boxes, labels)
        mb = rt.masks(features[name], b, keep)
        union = (ma | mb).sum(axis=(1, 2))
        iou = np.where(union > 0, (ma & mb).sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)
        out[name] = {
            "trunk_rel_l2": float((trunks[name].float() - want).norm() / want.norm()),
            "score_abs_max": float(np.abs(a.scores - b.scores).max()),
            "mask_iou_min": float(iou.min()),
            "masks_compared": len(keep),
        }
    return out


if __name__ == "__main__":
    main()
