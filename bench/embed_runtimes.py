"""In-process embed per fast runtime vs Meta's set_image, interleaved, at one priority:
`python -m bench.embed_runtimes --work-dir DIR` (DIR as bench.run's: weights/, runtime-cache/).

For a shared or loaded machine, where the server's niced embed lane (SAM2SERVE_EMBED_NICE)
is starved by outside work more than an in-process reference: each round embeds the three
photos with the reference and with every runtime in turn, so load hits all alike. Reports,
medians: embed (encoder + the decoder's per-image preparation) and its ratio to set_image,
the preparation alone, and the first vs warm decode (1 point) right after an embed.
`auto` as a runtime name loads the measured choice (its record is kept in the results).

`--emulate-avx2`: the same run with the math libraries capped to AVX2 (bench/emulate.py), an
emulation of a CPU without native bf16 (bf16 is then left out of the candidates); results go
to `...-embed-runtimes-emulated-avx2.json` with the evidence that the caps took effect.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import emulate
from bench.report import ROOT
from bench.run import SPEC, machine, photos
from sam2serve.runtime.base import PromptBatch

POINT = PromptBatch(np.array([[[256, 200]]], np.float32), np.array([[1]], np.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--runtimes", nargs="+", default=["f32", "bf16", "int8"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="re-run under AVX2 caps (oneDNN, MKL, ATen): a CPU without bf16, emulated",
    )
    args = parser.parse_args()
    if args.emulate_avx2 and emulate.active() is None:
        emulate.reexec("bench.embed_runtimes", sys.argv[1:])  # the caps act at library load
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2serve.runtime import openvino_runtime as ovr
    from sam2serve.runtime.torch_runtime import build_model

    evidence = emulate.evidence() if emulate.active() else None  # first: fails fast

    checkpoint = args.work_dir / "weights" / SPEC.filename
    if not checkpoint.exists():
        from sam2serve.testing import write_random_checkpoint

        write_random_checkpoint(SPEC, checkpoint.parent, seed=1)
    # an emulated run keeps its own cache: OpenVINO's compiled blobs and the measured choice
    # are then made under the caps, as on such a CPU, never shared with the uncapped runs
    cache = args.work_dir / (
        "runtime-cache" + (f"-emulated-{emulate.active()}" if emulate.active() else "")
    )
    imgs = list(photos().values())
    predictor = SAM2ImagePredictor(build_model(SPEC, checkpoint, torch.device("cpu")))
    names = list(args.runtimes)
    if "bf16" in names and ovr.probe("auto") != "bf16":
        print("no native bf16 here: bf16 left out")
        names.remove("bf16")
    runtimes: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for name in names:
        try:
            runtimes[name] = ovr.load_runtime(SPEC, checkpoint, cache, name)
        except RuntimeError as exc:  # e.g. OpenVINO refusing the int8 graph under the caps
            refused[name] = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            print(f"{name}: refused: {refused[name]}")
    predictor.set_image(imgs[0])  # warm-ups
    for rt in runtimes.values():
        rt.decode(rt.embed(imgs[1]), POINT, True)
    times: dict[str, list[float]] = {name: [] for name in ["set_image", *runtimes]}
    prep: dict[str, list[float]] = {name: [] for name in runtimes}
    first: dict[str, list[float]] = {name: [] for name in runtimes}
    warm: dict[str, list[float]] = {name: [] for name in runtimes}

    def timed(fn: Any) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    load_start = os.getloadavg()
    for _ in range(args.rounds):
        for rgb in imgs:
            times["set_image"].append(timed(lambda rgb=rgb: predictor.set_image(rgb)))
            for name, rt in runtimes.items():
                box: list[Any] = []
                times[name].append(timed(lambda rt=rt, rgb=rgb, box=box: box.append(rt.embed(rgb))))
                features = box[0]
                first[name].append(timed(lambda rt=rt, f=features: rt.decode(f, POINT, True)))
                warm[name].append(
                    statistics.median(
                        timed(lambda rt=rt, f=features: rt.decode(f, POINT, True)) for _ in range(3)
                    )
                )
                prep[name].append(timed(lambda rt=rt, f=features: rt._run_prep(f)))
    reference = statistics.median(times["set_image"])
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "machine": {**machine(), "load_average": load_start, "load_average_end": os.getloadavg()},
        "set_image_s": reference,
        "emulation": evidence,
        "runtimes": {},
        "refused": refused,
    }
    for name, rt in runtimes.items():
        embed = statistics.median(times[name])
        results["runtimes"][name] = {
            "precision": rt.precision,
            "embed_s": embed,
            "embed_vs_set_image": embed / reference,
            "prep_ms": statistics.median(prep[name]) * 1000,
            "first_decode_ms": statistics.median(first[name]) * 1000,
            "warm_decode_ms": statistics.median(warm[name]) * 1000,
        }
        if rt.choice is not None:
            results["runtimes"][name]["choice"] = rt.choice
    suffix = f"-emulated-{emulate.active()}" if emulate.active() else ""
    out = ROOT / "bench" / "results" / f"{results['date']}-embed-runtimes{suffix}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
