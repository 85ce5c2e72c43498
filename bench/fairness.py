"""Fair sharing between API keys: key B's embeds and video session while key A floods.

One server process (keys `alpha` = A and `beta` = B, seeded random weights, torch runtime):

  1. idle: B embeds `--idle` distinct images one after another (latency per embed);
  2. flood: A keeps `--flood` embeds in flight (distinct images; a refused one is sent again
     after its Retry-After, as the SDK does, or after `--retry-s`) and tries to open
     `--sessions` video sessions; meanwhile B embeds `--n` distinct images one after
     another, then opens one video session.

Goal: B's embed p95 under the flood <= (idle p95 + one embed) x 1.2, where one embed is B's
idle median (A's images are the same size), and B's session opens.

    PYTHONPATH=$PWD python -m bench.fairness [--model sam2.1_hiera_tiny] [--n 8]

The server's embeds run at nice 0 (`SAM2SERVE_EMBED_NICE=0`, `--nice` to change): on a
machine shared with other work, nice 10 lets everyone else's processes starve the embeds
being measured.

Prints one JSON line (the slow test runs it on the 256 px test architecture, few requests).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.serving import machine, server, wait_ready

A = {"authorization": "Bearer alpha"}
B = {"authorization": "Bearer beta"}
_seeds = itertools.count(1)


def image(seed: int, width: int = 640, height: int = 480) -> dict[str, str]:
    """A distinct PNG per seed (never a cache hit): a gradient with a noise patch, a few KB,
    so sending and decoding it costs little next to the embed being measured."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // width, yy * 255 // height, 0 * xx + 90], -1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    rgb[:32, :32] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return {"type": "base64", "value": base64.b64encode(buf.getvalue()).decode()}


class Images:
    """Distinct images made before the run (the client's CPU stays out of the measurement)."""

    def __init__(self, count: int) -> None:
        self._items = [image(next(_seeds)) for _ in range(count)]

    def next(self) -> dict[str, str]:
        if not self._items:  # ran out: make one more (rare)
            return image(next(_seeds))
        return self._items.pop()


IMAGES: Images | None = None


async def embed(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[int, float, float | None]:
    """(status, seconds, Retry-After seconds or None)."""
    assert IMAGES is not None
    body = {"image": IMAGES.next()}
    started = time.perf_counter()
    r = await http.post("/sam2/embed_image", json=body, headers=headers)
    retry = r.headers.get("retry-after")
    return r.status_code, time.perf_counter() - started, float(retry) if retry else None


async def open_session(http: httpx.AsyncClient, headers: dict[str, str], clip: bytes) -> int:
    files = {"video": ("clip.mp4", clip, "video/mp4")}
    r = await http.post("/sam2/video/sessions", files=files, headers=headers)
    return r.status_code


def _stats(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    return {
        "n": len(seconds),
        "p50": round(float(np.percentile(seconds, 50)), 3),
        "p95": round(float(np.percentile(seconds, 95)), 3),
        "max": round(max(seconds), 3),
    }


async def scenario(
    url: str, clip: bytes, n: int, idle: int, flood: int, sessions: int, retry_s: float | None
) -> dict:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await embed(http, B)  # warm-up (first embed of the process)
        idle_times = []
        for _ in range(idle):
            status, seconds, _ = await embed(http, B)
            assert status == 200, status
            idle_times.append(seconds)

        stop = asyncio.Event()
        a_status: Counter[int] = Counter()

        async def a_worker() -> None:
            while not stop.is_set():
                status, _, retry_after = await embed(http, A)
                a_status[status] += 1
                if status != 200:
                    wait = retry_s if retry_s is not None else (retry_after or 1.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)

        workers = [asyncio.create_task(a_worker()) for _ in range(flood)]
        a_sessions = [await open_session(http, A, clip) for _ in range(sessions)]
        await asyncio.sleep(2.0)  # the flood fills its share of the queue
        b_times, b_status = [], Counter()
        for _ in range(n):
            status, seconds, _ = await embed(http, B)
            b_status[status] += 1
            if status == 200:
                b_times.append(seconds)
        b_session = await open_session(http, B, clip)
        stop.set()
        await asyncio.gather(*workers)

    one_embed = float(np.percentile(idle_times, 50))
    idle_stats = _stats(idle_times)
    bound = (idle_stats["p95"] + one_embed) * 1.2
    flood_stats = _stats(b_times)
    return {
        "idle_b": idle_stats,
        "one_embed_s": round(one_embed, 3),
        "flood_b": flood_stats,
        "b_status": dict(b_status),
        "bound_s": round(bound, 3),
        "within_bound": bool(flood_stats) and flood_stats["p95"] <= bound,
        "a_status": dict(a_status),
        "a_sessions": a_sessions,
        "b_session": b_session,
    }


def run(
    model: str,
    n: int,
    idle: int,
    flood: int,
    sessions: int,
    retry_s: float | None = None,
    nice: int = 0,
) -> dict:
    from sam2serve.video.synthetic import synthetic_frames, write_mp4

    global IMAGES
    IMAGES = Images(400)

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_mp4(Path(tmp) / "clip.mp4", synthetic_frames(4)).read_bytes()
    env = {
        "SAM2SERVE_API_KEYS": "alpha,beta",
        "SAM2SERVE_RUNTIME": "torch",
        "SAM2SERVE_EMBED_NICE": str(nice),
    }
    with server(model, env) as (url, _pid):
        wait_ready(url)
        result = asyncio.run(scenario(url, clip, n, idle, flood, sessions, retry_s))
    a_retry = "Retry-After" if retry_s is None else f"{retry_s} s"
    return {"model": model, "flood": flood, "a_retry": a_retry, **result, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--n", type=int, default=8, help="B's embeds under the flood")
    parser.add_argument("--idle", type=int, default=5, help="B's embeds alone")
    parser.add_argument("--flood", type=int, default=8, help="A's embeds in flight")
    parser.add_argument("--sessions", type=int, default=4, help="sessions A tries to open")
    parser.add_argument("--retry-s", type=float, help="A's wait after a refusal (Retry-After)")
    parser.add_argument("--nice", type=int, default=0, help="SAM2SERVE_EMBED_NICE")
    args = parser.parse_args()
    result = run(args.model, args.n, args.idle, args.flood, args.sessions, args.retry_s, args.nice)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
