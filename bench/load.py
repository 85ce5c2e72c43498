"""The HTTP half of bench/run.py: start a server subprocess, measure it over HTTP."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.fidelity import compare, seeded_prompts
from sam2serve.media.postprocess import rle_to_mask
from sam2serve.runtime.memory import rss_bytes
from sam2serve.testing import wait_until_ready

ROOT = Path(__file__).resolve().parent.parent


def server_env(weights: Path, cache: Path, model_id: str, runtime: str) -> dict[str, str]:
    """The environment of a bench server: seeded weights in `weights`, no download, CPU,
    exported graphs in `cache`, the model preloaded."""
    return {
        **os.environ,
        "SAM2SERVE_WEIGHTS_DIR": str(weights),
        "SAM2SERVE_ALLOW_DOWNLOAD": "false",
        "SAM2SERVE_DEFAULT_MODEL": model_id,
        "SAM2SERVE_PRELOAD": "true",
        "SAM2SERVE_DEVICE": "cpu",
        "SAM2SERVE_RUNTIME_CACHE_DIR": str(cache),
        "SAM2SERVE_RUNTIME": runtime,
    }


def b64_png(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def median_time(fn: Any, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def five_boxes(h: int, w: int) -> list[np.ndarray]:
    return [
        np.array([(0.1 + 0.1 * i) * w, 0.2 * h, (0.4 + 0.1 * i) * w, 0.8 * h], np.float32)
        for i in range(5)
    ]


# -- server -------------------------------------------------------------------------------


def five_box_prompts(h: int, w: int) -> list[dict]:
    """`five_boxes` as API prompts (center-based boxes), one box each."""
    return [
        {
            "box": {
                "x": float(b[0] + b[2]) / 2,
                "y": float(b[1] + b[3]) / 2,
                "width": float(b[2] - b[0]),
                "height": float(b[3] - b[1]),
            }
        }
        for b in five_boxes(h, w)
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vmrss_mib(pid: int) -> float:
    rss = rss_bytes(pid)
    if rss is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return rss / 2**20


@contextmanager
def server(
    cmd: list[str], env: dict[str, str], port: int, log: Path, cwd: Path = ROOT
) -> Iterator[tuple[int, float]]:
    """Start in `cwd`, wait for /readyz (bounded), yield (pid, seconds to ready), stop."""
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", proc, 900, poll_s=0.25)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {log}") from exc
        yield proc.pid, time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def segment_body(image_id: str, prompts: list[dict]) -> dict:
    return {"image_id": image_id, "prompts": {"prompts": prompts}, "format": "rle"}


def http_prompt(coords: np.ndarray, labels: np.ndarray) -> dict:
    """bench.fidelity prompt -> API prompt (center-based box)."""
    prompt: dict[str, Any] = {}
    if labels[:2].tolist() == [2, 3]:
        (x1, y1), (x2, y2) = coords[:2].tolist()
        prompt["box"] = {
            "x": (x1 + x2) / 2,
            "y": (y1 + y2) / 2,
            "width": x2 - x1,
            "height": y2 - y1,
        }
        coords, labels = coords[2:], labels[2:]
    if len(labels):
        prompt["points"] = [
            {"x": float(x), "y": float(y), "positive": bool(lab == 1)}
            for (x, y), lab in zip(coords.tolist(), labels, strict=True)
        ]
    return prompt


def post(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    response.raise_for_status()
    return response.json()


def embed_body(image: str, image_id: str | None = None) -> dict:
    body: dict[str, Any] = {"image": {"type": "base64", "value": image}}
    if image_id:
        body["image_id"] = image_id
    return body


def measure_embeds(client: httpx.Client, images: Iterator[str], count: int = 6) -> dict[str, float]:
    """Server-side embed time (the response's `time`) and round trip, medians of `count`
    distinct images after one warm-up."""
    post(client, "/sam2/embed_image", embed_body(next(images)))
    server_times, rtts = [], []
    for _ in range(count):
        t = time.perf_counter()
        server_times.append(post(client, "/sam2/embed_image", embed_body(next(images)))["time"])
        rtts.append(time.perf_counter() - t)
    return {
        "embed_server_s": statistics.median(server_times),
        "embed_rtt_s": statistics.median(rtts),
    }


def measure_first_click(
    client: httpx.Client, images: Iterator[str], hw: tuple[int, int], count: int = 5
) -> dict[str, float]:
    """The first click on a freshly embedded image vs later (warm) clicks on it: `count`
    distinct images, each embedded, clicked once (first), then 3 times (warm, median);
    medians over the images."""
    h, w = hw
    firsts, warms = [], []
    for i in range(count):
        image_id = f"first-click-{i}"
        post(client, "/sam2/embed_image", embed_body(next(images), image_id))
        click = segment_body(
            image_id, [{"points": [{"x": 0.5 * w, "y": 0.4 * h, "positive": True}]}]
        )
        t = time.perf_counter()
        post(client, "/sam2/segment_image", click)
        firsts.append(time.perf_counter() - t)
        warms.append(
            median_time(lambda click=click: post(client, "/sam2/segment_image", click), 3, 0)
        )
    first, warm = statistics.median(firsts), statistics.median(warms)
    return {"first_click_s": first, "warm_click_s": warm, "first_over_warm": first / warm}


def measure_fidelity(
    client: httpx.Client, imgs: dict[str, np.ndarray], ref: dict[str, Any]
) -> dict[str, Any]:
    """Final-mask IoU over HTTP against the reference's masks: each prompt alone, best mask."""
    ious: list[float] = []
    for i, (name, im) in enumerate(imgs.items()):
        post(client, "/sam2/embed_image", embed_body(b64_png(im), name))
        got = []
        for coords, labels in seeded_prompts(*im.shape[:2], seed=i):
            body = segment_body(name, [http_prompt(coords, labels)])
            rle = post(client, "/sam2/segment_image", body)["predictions"][0]["masks"]
            got.append(rle_to_mask(rle).astype(bool))
        ious += compare(ref["masks"][name], got)
    return {
        "mean": float(np.mean(ious)),
        "min": float(np.min(ious)),
        "ious": [round(v, 4) for v in ious],
    }


def runtime_info(client: httpx.Client) -> dict[str, Any]:
    """/info's `runtimes` (which runtime and precision, and the measured choice)."""
    response = client.get("/info")
    response.raise_for_status()
    return response.json().get("runtimes", {})


def measure_server(
    base: str, pid: int, imgs: dict[str, np.ndarray], ref: dict[str, Any], pool: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"idle_rss_mib": vmrss_mib(pid)}
    client = httpx.Client(base_url=base, timeout=120)
    encoded = {name: b64_png(rgb) for name, rgb in imgs.items()}
    images = iter(pool)

    def embed(c: httpx.Client, image_id: str | None = None) -> dict:
        return post(c, "/sam2/embed_image", embed_body(next(images), image_id))

    out["runtimes"] = runtime_info(client)
    # embed: server-side time and round trip, distinct photos (first one is a warm-up)
    out.update(measure_embeds(client, images))

    # RSS growth per cached image: 10 more distinct images
    before = vmrss_mib(pid)
    for _ in range(10):
        embed(client)
    out["rss_per_image_mib"] = (vmrss_mib(pid) - before) / 10

    # first click on a freshly embedded image vs warm clicks (the decoder's per-image work)
    out.update(measure_first_click(client, images, imgs["astronaut"].shape[:2]))

    # cached click and 5 prompts on the astronaut
    rgb = imgs["astronaut"]
    h, w = rgb.shape[:2]
    post(
        client,
        "/sam2/embed_image",
        {"image": {"type": "base64", "value": encoded["astronaut"]}, "image_id": "astro"},
    )
    click = segment_body("astro", [{"points": [{"x": 0.5 * w, "y": 0.4 * h, "positive": True}]}])
    out["click_rtt_s"] = median_time(lambda: post(client, "/sam2/segment_image", click), 30, 3)
    five = segment_body("astro", five_box_prompts(h, w))
    out["five_rtt_s"] = median_time(lambda: post(client, "/sam2/segment_image", five), 15, 2)

    # throughput: 4 clients clicking for 8 s
    done = [0] * 4

    def clicker(i: int, until: float) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while time.perf_counter() < until:
                post(c, "/sam2/segment_image", click)
                done[i] += 1

    start = time.perf_counter()
    run_threads([lambda i=i: clicker(i, start + 8.0) for i in range(4)])
    out["click_throughput_per_s"] = sum(done) / (time.perf_counter() - start)

    # click latency while 2 clients embed new images continuously (10 s)
    stop = threading.Event()
    embeds = [0]

    def embedder() -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            while not stop.is_set():
                try:
                    embed(c)
                except StopIteration:
                    return
                embeds[0] += 1

    workers = [threading.Thread(target=embedder) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    latencies = []
    until = time.perf_counter() + 10.0
    while time.perf_counter() < until:
        t = time.perf_counter()
        post(client, "/sam2/segment_image", click)
        latencies.append(time.perf_counter() - t)
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    out["click_p95_under_embed_s"] = float(np.percentile(latencies, 95))
    out["click_p50_under_embed_s"] = float(np.median(latencies))
    out["embeds_under_load"] = embeds[0]

    # fidelity over HTTP: each prompt alone, best mask, rle
    out["fidelity"] = measure_fidelity(client, imgs, ref)
    out["final_rss_mib"] = vmrss_mib(pid)
    client.close()
    return out


def run_threads(targets: list[Any]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
