"""What a refused request costs a freshly started server: peak resident memory growth.

On a fresh server process (default model preloaded, seeded random weights), the peak RSS
(VmHWM, reset just before) is read around each request:

  1. segment_image: a 6000 x 6000 PNG with 16 prompts (over SAM2SERVE_MAX_MASK_PIXELS: 413);
  2. segment_everything on the same PNG with 20,480 grid points (over the points budget: 413);
  3. control: the same PNG with 4 prompts (within the budget: decoded, embedded, served).

    PYTHONPATH=$PWD python -m bench.refusal_memory [--model sam2.1_hiera_tiny] [--size 6000]

Prints one JSON line (the slow test runs it on the 256 px test architecture).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time

import httpx
import numpy as np
from PIL import Image

from bench.serving import machine, memory_kib, reset_peak, server, wait_ready

POINT = {"points": [{"x": 100, "y": 100, "positive": True}]}


def png_b64(size: int) -> str:
    """A size x size PNG of flat regions: decodes to size^2 x 3 bytes, compresses to ~KB."""
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[size // 4 : size // 2, size // 4 : size // 2] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def measure(url: str, pid: int, route: str, body: dict) -> dict[str, object]:
    """Send one request; the server's peak RSS growth over its RSS before, in MiB."""
    before = memory_kib(pid)["VmRSS"]
    reset_peak(pid)
    started = time.perf_counter()
    r = httpx.post(f"{url}{route}", json=body, timeout=600)
    elapsed = time.perf_counter() - started
    peak = memory_kib(pid)["VmHWM"]
    return {
        "route": route,
        "status": r.status_code,
        "message": r.json().get("message", "") if r.status_code != 200 else "",
        "peak_growth_mib": round((peak - before) / 1024, 1),
        "seconds": round(elapsed, 3),
    }


def run(model: str, size: int, prompts: int, control: bool = True) -> dict[str, object]:
    image = {"type": "base64", "value": png_b64(size)}
    with server(model, {"SAM2SERVE_RUNTIME": "torch"}) as (url, pid):
        wait_ready(url)
        start = memory_kib(pid)
        cases = [
            (
                "/sam2/segment_image",
                {"image": image, "prompts": [POINT] * prompts, "format": "rle"},
            ),
            (
                "/sam2/segment_everything",
                {"image": image, "points_per_side": 64, "crop_n_layers": 1},
            ),
        ]
        if control:
            cases.append(
                ("/sam2/segment_image", {"image": image, "prompts": [POINT] * 4, "format": "rle"})
            )
        results = [measure(url, pid, route, body) for route, body in cases]
    return {
        "model": model,
        "size": size,
        "prompts": prompts,
        "body_bytes": len(image["value"]),
        "rss_at_ready_mib": round(start["VmRSS"] / 1024, 1),
        "requests": results,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--no-control", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.model, args.size, args.prompts, not args.no_control)))


if __name__ == "__main__":
    main()
