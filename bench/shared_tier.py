"""The shared (Redis) tier in numbers: `python -m bench.shared_tier [--runtime auto]`.

Two real `sam2serve serve` replicas (A, B) on 127.0.0.1 sharing one real redis-server, on
seeded random SAM 2.1 hiera_tiny weights:

1. click latency over HTTP (1 point, rle, median): on the replica that embedded the image
   (local features), the first id-only click on the other replica (features fetched from
   Redis), and a click that must re-embed (image sent to a replica that never saw it);
2. Redis memory per cached image (INFO used_memory delta / images) and the value size;
3. click throughput with 4 client threads for a fixed time: all on one replica vs spread
   over both (this box has 2 cores: no speedup is expected).

Prints a table and writes bench/results/<date>-shared-tier.json. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import report
from bench.load import free_port, median_time, run_threads, server, server_env
from bench.run import commit, distinct_images, machine, photos, server_command
from sam2serve.registry import REGISTRY
from sam2serve.testing import write_random_checkpoint

SPEC = REGISTRY["sam2.1_hiera_tiny"]
CLICK = {"points": [{"x": 200, "y": 150, "positive": True}]}


def segment(http: httpx.Client, image_id: str, image: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"image_id": image_id, "prompts": CLICK, "format": "rle"}
    if image is not None:
        body["image"] = {"type": "base64", "value": image}
    response = http.post("/sam2/segment_image", json=body)
    response.raise_for_status()
    return response


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput(urls: list[str], image_id: str, seconds: float, clients: int = 4) -> float:
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=60) as http:
            while time.perf_counter() < stop:
                segment(http, image_id)
                done[i] += 1

    run_threads([lambda i=i: worker(i) for i in range(clients)])
    return sum(done) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sam2serve-bench-shared-"))
    weights, cache = work / "weights", Path(tempfile.gettempdir()) / "sam2serve-bench-runtime"
    write_random_checkpoint(SPEC, weights, seed=1)
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    rds = redis.Redis(port=redis_port)
    for _ in range(100):
        try:
            rds.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    env = {
        **server_env(weights, cache, SPEC.model_id, args.runtime),
        "SAM2SERVE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    imgs = distinct_images(list(photos().values()), args.images * 3 + 1)
    out: dict[str, Any] = {"runtime": args.runtime, "images": args.images}
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        with (
            server(server_command(ports[0], weights), {**env, "SAM2SERVE_REPLICA_NAME": "A"},
                   ports[0], work / "a.log"),
            server(server_command(ports[1], weights), {**env, "SAM2SERVE_REPLICA_NAME": "B"},
                   ports[1], work / "b.log"),
            httpx.Client(base_url=urls[0], timeout=120) as a,
            httpx.Client(base_url=urls[1], timeout=120) as b,
        ):  # fmt: skip
            before = int(rds.info("memory")["used_memory"])
            for i in range(args.images):
                body = {"image": {"type": "base64", "value": imgs[i]}, "image_id": f"img{i}"}
                a.post("/sam2/embed_image", json=body).raise_for_status()
            after = int(rds.info("memory")["used_memory"])
            out["redis_bytes_per_image"] = (after - before) / args.images
            value_key = rds.keys("sam2serve:v1:f:*")[0]
            out["value_bytes"] = int(rds.strlen(value_key))
            # the first click on an image embedded here also pays the decoder's per-image
            # preparation (as B's first click after a fetch does)
            firsts = []
            for i in range(args.images):
                body = {"image": {"type": "base64", "value": imgs[2 * args.images + i]}}
                body["image_id"] = f"first{i}"
                a.post("/sam2/embed_image", json=body).raise_for_status()
                firsts.append(timed(lambda i=i: segment(a, f"first{i}")))
            out["click_local_first_s"] = statistics.median(firsts)
            out["click_local_s"] = median_time(lambda: segment(a, "img0"), reps=20, warmup=2)
            fetched = [timed(lambda i=i: segment(b, f"img{i}")) for i in range(args.images)]
            out["click_redis_first_s"] = statistics.median(fetched)
            out["click_b_after_fetch_s"] = median_time(lambda: segment(b, "img0"), reps=20)
            fresh = [
                timed(lambda j=j: segment(b, f"new{j}", imgs[args.images + j]))
                for j in range(min(4, args.images))
            ]
            out["click_reembed_s"] = statistics.median(fresh)
            out["throughput_1_replica"] = throughput(urls[:1], "img0", args.seconds)
            out["throughput_2_replicas"] = throughput(urls, "img0", args.seconds)
            out["redis_used_memory_total"] = int(rds.info("memory")["used_memory"])
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    out["ratio_redis_vs_local"] = out["click_redis_first_s"] / out["click_local_s"]
    out["ratio_redis_vs_local_first"] = out["click_redis_first_s"] / out["click_local_first_s"]
    out["ratio_redis_vs_reembed"] = out["click_redis_first_s"] / out["click_reembed_s"]
    out["machine"], out["commit"], out["date"] = machine(), commit(), str(date.today())
    path = report.ROOT / "bench" / "results" / f"{date.today()}-shared-tier-{args.runtime}.json"
    path.write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        if key != "machine":
            print(f"{key:28s} {value}")
    print(f"raw: {path}")


if __name__ == "__main__":
    main()
