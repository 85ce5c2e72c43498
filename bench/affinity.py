"""Affinity routing in numbers: `python -m bench.affinity [--runtime auto]`.

Two real `sam2serve serve` replicas (A, B) sharing one real redis-server, behind Debian's
nginx running deploy/nginx-affinity.conf (`hash $http_x_sam2serve_image_id consistent`), on
seeded random SAM 2.1 hiera_tiny weights:

1. per image: embed through nginx with the SDK (which sends the content hash it computes in
   X-Sam2serve-Image-Id), then clicks (1 point, rle) with the header through nginx, each
   followed by the same click sent straight to the replica that answered (a warm local
   click): p50 of each, their ratio (target <= 1.15x), and on how many replicas each image's
   requests landed;
2. Redis feature fetches (`features.hit` of both replicas' shared tier) during those clicks
   (target ~0), against the same clicks with no header (round robin: the other replica
   fetches each image once).

Prints a table and writes bench/results/<date>-affinity-<runtime>.json. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis

from bench import report
from bench.load import free_port, server, server_env
from bench.nginx import running_nginx
from bench.run import commit, machine, photos, server_command
from sam2serve.client import Sam2Client
from sam2serve.registry import REGISTRY
from sam2serve.testing import write_random_checkpoint
from sam2serve.wire import IMAGE_ID_HEADER

SPEC = REGISTRY["sam2.1_hiera_tiny"]
REPLICA = "X-Sam2serve-Replica"


def click_body(image_id: str, i: int) -> dict[str, Any]:
    point = {"x": 120 + 9 * (i % 20), "y": 90 + 7 * (i % 20), "positive": True}
    return {"image_id": image_id, "prompts": {"points": [point]}, "format": "rle"}


def timed_post(http: httpx.Client, body: dict, headers: dict | None) -> tuple[float, str]:
    started = time.perf_counter()
    response = http.post("/sam2/segment_image", json=body, headers=headers)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.headers[REPLICA]


def fetches(urls: dict[str, str]) -> dict[str, int]:
    """Features fetched from Redis so far, per replica."""
    return {name: counts["features.hit"] for name, counts in tier_counts(urls).items()}


def tier_counts(urls: dict[str, str]) -> dict[str, dict[str, int]]:
    """The shared tier's counts per replica ("features.hit" = a fetch; "*.error" = a Redis
    fault, after which the replica serves local-only for SAM2SERVE_REDIS_RETRY_S)."""
    out = {}
    for name, url in urls.items():
        counts = httpx.get(f"{url}/info", timeout=30).json()["shared_tier"]["counts"]
        out[name] = {"features.hit": 0, **{k: int(v) for k, v in counts.items()}}
    return out


def images(count: int) -> list[np.ndarray]:
    """`count` distinct photos (one changed pixel each), full size."""
    base = list(photos().values())
    out = []
    for i in range(count):
        rgb = base[i % len(base)].copy()
        rgb[0, 0, 0] = (int(rgb[0, 0, 0]) + 1 + i) % 256
        out.append(rgb)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=20, help="clicks per image, after a warm-up")
    parser.add_argument(
        "--redis-timeout",
        default="5",
        help="SAM2SERVE_REDIS_TIMEOUT_S of the replicas: on a loaded machine a 16 MiB SET can "
        "pass the 0.5 s default, trip the breaker and leave an image unpublished",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sam2serve-bench-affinity-"))
    weights, cache = work / "weights", Path(tempfile.gettempdir()) / "sam2serve-bench-runtime"
    write_random_checkpoint(SPEC, weights, seed=1)
    out: dict[str, Any] = {"runtime": args.runtime, "images": args.images, "clicks": args.clicks}
    out["redis_timeout_s"] = float(args.redis_timeout)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        stack.callback(redis_proc.wait, timeout=10)
        stack.callback(redis_proc.terminate)
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
            "SAM2SERVE_REDIS_TIMEOUT_S": str(args.redis_timeout),
        }
        ports = {"A": free_port(), "B": free_port()}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name, port in ports.items():
            stack.enter_context(
                server(
                    server_command(port, weights),
                    {**env, "SAM2SERVE_REPLICA_NAME": name},
                    port,
                    work / f"{name}.log",
                )
            )
        nginx = stack.enter_context(running_nginx(list(ports.values())))
        routed_http = stack.enter_context(httpx.Client(base_url=nginx.url, timeout=120))
        direct = {
            name: stack.enter_context(httpx.Client(base_url=url, timeout=120))
            for name, url in urls.items()
        }
        sdk = stack.enter_context(Sam2Client(nginx.url, timeout=300))

        pictures = images(2 * args.images)
        before = fetches(urls)
        routed, local, firsts, owners = [], [], [], {}
        for n in range(args.images):
            image_id = sdk.embed_image(pictures[n]).image_id
            header = {IMAGE_ID_HEADER: image_id}
            first, owner = timed_post(routed_http, click_body(image_id, 0), header)
            firsts.append(first)
            seen = {owner}
            for i in range(1, args.clicks + 1):
                body = click_body(image_id, i)
                elapsed, replica = timed_post(routed_http, body, header)  # through nginx
                routed.append(elapsed)
                seen.add(replica)
                local.append(timed_post(direct[replica], body, None)[0])  # warm, local
            owners[image_id] = sorted(seen)
        after = fetches(urls)
        out["routed_click_p50_s"] = statistics.median(routed)
        out["local_click_p50_s"] = statistics.median(local)
        out["routed_first_click_p50_s"] = statistics.median(firsts)
        out["ratio_routed_vs_local"] = out["routed_click_p50_s"] / out["local_click_p50_s"]
        out["replicas_per_image"] = {k: len(v) for k, v in owners.items()}
        out["owners"] = owners
        out["redis_fetches_with_header"] = sum(after.values()) - sum(before.values())
        for key in ("routed_click_p50_s", "local_click_p50_s", "ratio_routed_vs_local"):
            print(f"{key:30s} {out[key]}", flush=True)

        # the same traffic with no header (inference-sdk, curl): round robin over A and B
        before = fetches(urls)
        plain = []
        for n in range(args.images, 2 * args.images):
            image_id = sdk.embed_image(pictures[n]).image_id
            for i in range(args.clicks + 1):
                plain.append(timed_post(routed_http, click_body(image_id, i), None)[0])
        after = fetches(urls)
        out["plain_click_p50_s"] = statistics.median(plain)
        out["redis_fetches_without_header"] = sum(after.values()) - sum(before.values())
        out["shared_tier_counts"] = tier_counts(urls)
    out["machine"], out["commit"], out["date"] = machine(), commit(), str(date.today())
    path = report.ROOT / "bench" / "results" / f"{date.today()}-affinity-{args.runtime}.json"
    path.write_text(json.dumps(out, indent=2))
    for key, value in out.items():
        if key not in ("machine", "owners", "shared_tier_counts"):
            print(f"{key:30s} {value}")
    print(f"raw: {path}")


if __name__ == "__main__":
    main()
