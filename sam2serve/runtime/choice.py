"""The fast runtime's image encoder, chosen by measurement on this machine, once.

At the one-time preparation (`runtime.preparing` runs it in the background) every candidate
encoder (OpenVINO f32; bf16 where the CPU computes bf16 natively; int8 where NNCF could
quantize) is compiled and timed on the held-out check image, in interleaved rounds (load
from other work hits every candidate alike), and its masks are checked against the f32
encoder's: the exact torch decoder runs on each candidate's features with the same seeded
prompts (single points on a grid and boxes), best of 3 masks by predicted IoU, low-res
logits > 0. The fastest candidate whose masks keep mean IoU >= 0.98 and min >= 0.95 (the
fast path's stated tolerance) is kept.

The choice and the timings are written beside the graphs (`choice-<bf16|f32>.json`, one per
kind of CPU: a CPU without native bf16 cannot run a bf16 choice) under a file lock, so every
process sharing the runtime cache dir reuses one measurement, and replicas sharing a Redis
tier produce the same features (their values name the producing precision; see
store/codec.py `Identity.producer`). `SAM2SERVE_RUNTIME=openvino-<precision>` pins one instead.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from sam2serve.runtime.base import Decoded, Features, PromptBatch

log = logging.getLogger(__name__)

FORMAT = 1
TOLERANCE = {"mean_iou": 0.98, "min_iou": 0.95}
ROUNDS = 3  # timed encoder runs per candidate (after one untimed warm-up)
REFERENCE = "f32"  # the candidate the others' masks are compared with

#: (1, 3, S, S) float32 input -> the encoder's outputs (image_embed, feat_s0, feat_s1)
EncodeFn = Callable[[np.ndarray], list[torch.Tensor]]
#: float32 features + prompts -> masks of the exact (torch) decoder, multimask
DecodeFn = Callable[[Features, PromptBatch], Decoded]


def choice_path(graphs_dir: Path, inference: str) -> Path:
    """Where the choice for CPUs computing at `inference` ("bf16" | "f32") is kept."""
    return Path(graphs_dir) / f"choice-{inference}.json"


def check_prompts(h: int, w: int) -> list[PromptBatch]:
    """Seeded prompts on an (h, w) image: 16 single points on a 4 x 4 grid, 6 boxes."""
    fx, fy = np.meshgrid(np.linspace(0.15, 0.85, 4), np.linspace(0.15, 0.85, 4))
    points = np.stack([fx.ravel() * w, fy.ravel() * h], -1).astype(np.float32)[:, None]
    rng = np.random.default_rng(0)
    centre = rng.uniform(0.25, 0.75, (6, 2)) * (w, h)
    half = rng.uniform(0.08, 0.25, (6, 2)) * (w, h)
    boxes = np.stack([centre - half, centre + half], 1).astype(np.float32)
    return [
        PromptBatch(points, np.ones((len(points), 1), np.int32)),
        PromptBatch(boxes, np.tile(np.array([[2, 3]], np.int32), (len(boxes), 1))),
    ]


def _masks(decode: DecodeFn, features: Features) -> list[np.ndarray]:
    h, w = features.orig_hw
    out = []
    for batch in check_prompts(h, w):
        decoded = decode(features, batch)
        best = decoded.scores.argmax(dim=1)
        low = decoded.low_res[torch.arange(len(best)), best]
        out += list((low > 0).numpy())
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def measure(
    encoders: dict[str, Callable[[], EncodeFn]],
    x: np.ndarray,
    orig_hw: tuple[int, int],
    decode: DecodeFn,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Compile (`encoders[name]()`), time and check every candidate; pick the fastest that
    meets TOLERANCE. x: the check image as the encoder's (1, 3, S, S) float32 input, orig_hw
    its size. encoders must include REFERENCE. A candidate other than the reference whose
    compile raises is left out, recorded with the reason (`refused`): e.g. the int8 graph
    under an ISA cap that OpenVINO's plugin and its kernels disagree about.
    Returns the record kept in the choice file."""
    if REFERENCE not in encoders:
        raise ValueError(f"the candidates must include the {REFERENCE} reference")
    started = time.perf_counter()
    fns: dict[str, EncodeFn] = {}
    refused: dict[str, str] = {}
    for name, make in encoders.items():
        try:
            fns[name] = make()
        except Exception as exc:  # the plugin cannot build this candidate here: leave it out
            if name == REFERENCE:
                raise
            log.warning("fast runtime: the %s encoder does not compile here: %s", name, exc)
            refused[name] = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
    outputs = {name: fn(x) for name, fn in fns.items()}  # warm-up; these are checked
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)

    def features(name: str) -> Features:
        embed, *high = (t.float() for t in outputs[name])
        return Features(image_embed=embed, high_res=tuple(high), orig_hw=orig_hw)

    reference = _masks(decode, features(REFERENCE))
    candidates: dict[str, dict[str, Any]] = {}
    for name in fns:
        ious = [_iou(a, b) for a, b in zip(reference, _masks(decode, features(name)), strict=True)]
        mean, low = float(np.mean(ious)), float(np.min(ious))
        candidates[name] = {
            "embed_s": round(statistics.median(times[name]), 4),
            "runs_s": [round(t, 4) for t in times[name]],
            "mean_iou": round(mean, 4),
            "min_iou": round(low, 4),
            "meets_tolerance": mean >= TOLERANCE["mean_iou"] and low >= TOLERANCE["min_iou"],
        }
    for name, reason in refused.items():
        candidates[name] = {"refused": reason, "meets_tolerance": False}
    passing = [name for name, c in candidates.items() if c["meets_tolerance"]]
    chosen = min(passing or [REFERENCE], key=lambda name: candidates[name]["embed_s"])
    return {
        "format": FORMAT,
        "chosen": chosen,
        "candidates": candidates,
        "tolerance": TOLERANCE,
        "rounds": rounds,
        "prompts": sum(len(b) for b in check_prompts(*orig_hw)),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def load_or_measure(
    path: Path, key: dict[str, Any], run: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """The choice recorded at `path` for `key` (what was measured: candidates, recipe), or
    `run()`'s, recorded there. One measurement per path across processes (file lock)."""
    found = read_choice(path, key)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        found = read_choice(path, key)  # another process measured while we waited
        if found is not None:
            return found
        record = {**run(), "key": key}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(record, out, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    log.info(
        "fast runtime: chose the %s encoder (%s) in %.1fs",
        record["chosen"],
        ", ".join(
            f"{n} {c['embed_s']:.3f}s" if "embed_s" in c else f"{n} refused"
            for n, c in record["candidates"].items()
        ),
        record["seconds"],
    )
    return record


def read_choice(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record at `path` if it was measured over `key`, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != key:
        return None  # another recipe, other candidates or an older format: measure again
    if record.get("chosen") not in record.get("candidates", {}):
        return None
    return record
