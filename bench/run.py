"""Every figure of issue 4's table in one run: `python -m bench.run`.

1. Reference, in-process: Meta's SAM2ImagePredictor (fp32 eager) on seeded random
   SAM 2.1 hiera_tiny weights: set_image, predict (1 point), 5 x predict, reference masks.
2. A real server (uvicorn subprocess on 127.0.0.1) on the same weights: first start with an
   empty runtime cache, then a warm start, then over HTTP: server-side embed time, cached
   click and 5-prompt round trips, 4-client click throughput, click p95 while 2 clients
   embed, RSS growth per cached image (VmRSS of the server), fidelity (mask IoU).
3. Per fast runtime (`--runtimes`, default openvino-f32, openvino-bf16 where the CPU has
   native bf16, openvino-int8), a warm server pinned to it: server-side embed, first vs warm
   click on a freshly embedded image, fidelity; the ratios to the reference's set_image.
4. Table with ratios and targets on stdout; JSON in bench/results/<date>.json; the numbers in
   docs/benchmarks.md (date, machine and its CPU flags, commit). Every loop is bounded in
   count and time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import report
from bench.fidelity import reference_masks, seeded_prompts
from bench.load import (
    b64_png,
    five_boxes,
    free_port,
    measure_embeds,
    measure_fidelity,
    measure_first_click,
    measure_server,
    median_time,
    runtime_info,
    server,
    server_env,
)
from sam2serve.registry import REGISTRY
from sam2serve.runtime.cpu import fast_path_flags

SPEC = REGISTRY["sam2.1_hiera_tiny"]
ROOT = report.ROOT
VENV_BIN = Path(sys.executable).parent


def photos() -> dict[str, np.ndarray]:
    import skimage.data

    return {
        "astronaut": skimage.data.astronaut(),
        "coffee": skimage.data.coffee(),
        "chelsea": skimage.data.chelsea(),
    }


def distinct_images(base: list[np.ndarray], count: int) -> list[str]:
    """`count` base64 PNGs with distinct pixels (so distinct cache entries), same sizes."""
    out = []
    for i in range(count):
        rgb = base[i % len(base)].copy()
        rgb[0, : 1 + i // 256, 0] = i % 256  # one changed pixel row start: a new content hash
        rgb[1, 0, 0] = (i // len(base)) % 256
        out.append(b64_png(rgb))
    return out


# -- reference ----------------------------------------------------------------------------


def run_reference(checkpoint: Path, imgs: dict[str, np.ndarray]) -> dict[str, Any]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2serve.runtime.torch_runtime import build_model

    predictor = SAM2ImagePredictor(build_model(SPEC, checkpoint, torch.device("cpu")))
    rgbs = list(imgs.values())
    predictor.set_image(rgbs[0])  # warm-up
    set_times = []
    for rgb in rgbs * 2:
        t = time.perf_counter()
        predictor.set_image(rgb)
        set_times.append(time.perf_counter() - t)
    rgb = rgbs[0]
    predictor.set_image(rgb)
    h, w = rgb.shape[:2]
    point = np.array([[0.5 * w, 0.4 * h]], np.float32)
    one = median_time(
        lambda: predictor.predict(point_coords=point, point_labels=np.array([1])), reps=20
    )
    boxes = five_boxes(h, w)
    five = median_time(lambda: [predictor.predict(box=b) for b in boxes], reps=8)
    masks = {
        name: reference_masks(predictor, im, seeded_prompts(*im.shape[:2], seed=i))
        for i, (name, im) in enumerate(imgs.items())
    }
    return {
        "set_image_s": statistics.median(set_times),
        "predict_1pt_s": one,
        "predict_5x_s": five,
        "predict_rate_per_s": 1.0 / one,
        "masks": masks,
    }


# -- main ---------------------------------------------------------------------------------


def server_command(port: int, weights: Path) -> list[str]:
    return [
        str(VENV_BIN / "sam2serve"),
        "serve",
        "--port",
        str(port),
        "--weights-dir",
        str(weights),
    ]


def describe(cmd: list[str]) -> str:
    """The server command without the run-specific port and paths."""
    words, skip = [], False
    for i, word in enumerate(cmd):
        if skip:
            skip = False
        elif word in ("--port", "--weights-dir"):
            skip = True
        else:
            words.append(Path(word).name if i == 0 else word)
    return " ".join(words)


#: lscpu flags that decide which encoder precision runs fast (bf16, int8 dot products)


def cpu_kind(flags: list[str]) -> str:
    """The CPU kinds docs/benchmarks.md keeps a table for."""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "native bf16 (AVX512-BF16/AMX)" + (
            " + VNNI" if {"avx512_vnni", "amx_int8"} & set(flags) else ""
        )
    return "no native bf16" + (" (VNNI)" if {"avx512_vnni", "avx_vnni"} & set(flags) else "")


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        platform.processor(),
    )
    try:
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "-"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = fast_path_flags()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cpu_kind": cpu_kind(flags),
        "load_average": os.getloadavg(),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": ov_version,
    }


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout

    sha = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return sha + (
        "+uncommitted" if git("status", "--porcelain", "--untracked-files=no").strip() else ""
    )


def pinned_runtimes(asked: list[str] | None, flags: list[str]) -> list[str]:
    if asked is not None:
        return asked
    native_bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return ["openvino-f32", *(["openvino-bf16"] if native_bf16 else []), "openvino-int8"]


def measure_runtime(
    base: str, imgs: dict[str, np.ndarray], ref: dict[str, Any], pool: list[str]
) -> dict[str, Any]:
    """Embed, first vs warm click and fidelity of one (pinned) runtime's server."""
    import httpx

    images = iter(pool)
    with httpx.Client(base_url=base, timeout=120) as client:
        out: dict[str, Any] = {"runtimes": runtime_info(client)}
        out.update(measure_embeds(client, images))
        out.update(measure_first_click(client, images, imgs["astronaut"].shape[:2]))
        out["fidelity"] = measure_fidelity(client, imgs, ref)
    out["embed_vs_set_image"] = out["embed_server_s"] / ref["set_image_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "openvino", "openvino-bf16", "openvino-f32", "openvino-int8"],
        help="the server's SAM2SERVE_RUNTIME (auto = the shipped default)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sam2serve-bench"
    )
    parser.add_argument(
        "--keep-cache", action="store_true", help="skip the first start with an empty runtime cache"
    )
    parser.add_argument(
        "--runtimes",
        nargs="*",
        default=None,
        help="pinned fast runtimes also measured (embed, first click, fidelity); "
        "default: openvino-f32, openvino-bf16 (native bf16 only), openvino-int8; none: skip",
    )
    args = parser.parse_args()
    weights, cache = args.work_dir / "weights", args.work_dir / "runtime-cache"
    checkpoint = weights / SPEC.filename
    if not checkpoint.exists():
        from sam2serve.testing import write_random_checkpoint

        write_random_checkpoint(SPEC, weights, seed=1)
    imgs = photos()
    print("reference (in-process SAM2ImagePredictor)...", flush=True)
    ref = run_reference(checkpoint, imgs)
    pool = distinct_images(list(imgs.values()), 120)
    port = free_port()
    cmd = server_command(port, weights)
    env = server_env(weights, cache, SPEC.model_id, args.runtime)
    log = args.work_dir / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": date.today().isoformat(),
        "runtime": args.runtime,
        "server_cmd": describe(cmd),
        "machine": machine(),
        "commit": commit(),
    }
    cold = None
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        print("first start (empty runtime cache)...", flush=True)
        with server(cmd, env, port, log) as (_, cold):
            pass
    print("warm start + HTTP measurements...", flush=True)
    with server(cmd, env, port, log) as (pid, warm):
        measured = measure_server(f"http://127.0.0.1:{port}", pid, imgs, ref, pool)
    measured.update(cold_start_s=cold, warm_start_s=warm)
    results["reference"] = {k: v for k, v in ref.items() if k != "masks"}
    results["server"] = measured
    results["runtimes"] = {}
    for runtime in pinned_runtimes(args.runtimes, results["machine"]["cpu_flags"]):
        print(f"pinned runtime {runtime}...", flush=True)
        env = server_env(weights, cache, SPEC.model_id, runtime)
        with server(cmd, env, port, log) as (_, ready_s):
            results["runtimes"][runtime] = {
                "ready_s": ready_s,
                **measure_runtime(f"http://127.0.0.1:{port}", imgs, ref, pool),
            }
    results["machine"]["load_average_end"] = os.getloadavg()
    json_path, doc = report.write(results)
    print(report.table(results["rows"]))
    print(report.extras(results))
    print(report.runtimes_table(results))
    print(f"wrote {json_path.relative_to(ROOT)}" + (f" and {doc.relative_to(ROOT)}" if doc else ""))


if __name__ == "__main__":
    main()
