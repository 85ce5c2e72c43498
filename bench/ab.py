"""Two builds of the server, side by side, requests interleaved: `python -m bench.ab`.

`bench.run` measures one build against Meta's reference in one run; on a shared 2-core
machine the load moves between two such runs (Meta's set_image swung 2.6-5.6 s within ten
minutes here), so comparing two commits by their ratios needs a quiet hour. This runs both
builds' servers at once on the same seeded weights and measures them in alternation,
request by request (A then B, B then A on the next round), so a load spike hits both alike.
Reported per figure: each build's median and the after/before ratio of the medians, plus
the median of the per-round ratios.

    python -m bench.ab --before /path/to/old/checkout --after /path/to/new/checkout

Each tree's own server code runs (PYTHONPATH=tree); this checkout's bench drives both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from bench.load import (
    embed_body,
    five_box_prompts,
    free_port,
    median_time,
    post,
    run_threads,
    segment_body,
    server,
    server_env,
)
from bench.run import ROOT, SPEC, distinct_images, machine, photos

#: figure -> (unit, higher is better)
FIGURES = {
    "embed_server_s": ("s", False),
    "click_rtt_s": ("s", False),
    "five_rtt_s": ("s", False),
    "click_throughput_per_s": ("/s", True),
}


def tree_command(tree: Path, port: int, weights: Path) -> list[str]:
    """The tree's own CLI entry (a module before the cli package, a package after)."""
    entry = (
        "from sam2serve.cli.main import main"
        if (tree / "sam2serve" / "cli" / "main.py").is_file()
        else "from sam2serve.cli import main"
    )
    return [
        sys.executable,
        "-c",
        f"import sys; sys.argv[0] = 'sam2serve'; {entry}; main()",
        "serve",
        "--port",
        str(port),
        "--weights-dir",
        str(weights),
    ]


def one_round(client: httpx.Client, image: str, base_url: str, h: int, w: int) -> dict[str, float]:
    """One embed of a distinct image, then clicks / 5 prompts / 4-client throughput on it."""
    out = {"embed_server_s": post(client, "/sam2/embed_image", embed_body(image, "ab"))["time"]}
    click = segment_body("ab", [{"points": [{"x": 0.5 * w, "y": 0.4 * h, "positive": True}]}])
    five = segment_body("ab", five_box_prompts(h, w))
    # warm-up 1: the first click after an embed is left out of the warm figure
    out["click_rtt_s"] = median_time(lambda: post(client, "/sam2/segment_image", click), 9)
    out["five_rtt_s"] = median_time(lambda: post(client, "/sam2/segment_image", five), 5)
    out["click_throughput_per_s"] = _throughput(base_url, click, clients=4, seconds=3.0)
    return out


def _throughput(base_url: str, body: dict, clients: int, seconds: float) -> float:
    done = [0] * clients
    until = time.perf_counter() + seconds

    def clicker(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as c:
            while time.perf_counter() < until:
                post(c, "/sam2/segment_image", body)
                done[i] += 1

    start = time.perf_counter()
    run_threads([lambda i=i: clicker(i) for i in range(clients)])
    return sum(done) / (time.perf_counter() - start)


def summarize(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per figure: both medians, after/before of the medians, median of per-round ratios."""
    out = {}
    for figure in FIGURES:
        before = [r[figure] for r in rounds["before"]]
        after = [r[figure] for r in rounds["after"]]
        out[figure] = {
            "before": statistics.median(before),
            "after": statistics.median(after),
            "ratio": statistics.median(after) / statistics.median(before),
            "paired_ratio": statistics.median(a / b for a, b in zip(after, before, strict=True)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old commit")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the new commit")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runtime", default="auto", help="both servers' SAM2SERVE_RUNTIME")
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "sam2serve-bench-ab"
    )
    args = parser.parse_args()
    weights = args.work_dir / "weights"
    if not (weights / SPEC.filename).exists():
        from sam2serve.testing import write_random_checkpoint

        write_random_checkpoint(SPEC, weights, seed=1)
    imgs = photos()
    pool = distinct_images(list(imgs.values()), args.rounds + 1)
    h, w = imgs["astronaut"].shape[:2]
    results: dict[str, Any] = {"date": date.today().isoformat(), "machine": machine()}
    rounds: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with ExitStack() as stack:
        urls = {}
        for side in ("before", "after"):
            tree = getattr(args, side).resolve()
            port = free_port()
            env = server_env(weights, args.work_dir / f"cache-{side}", SPEC.model_id, args.runtime)
            env["PYTHONPATH"] = str(tree)
            log = args.work_dir / f"server-{side}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            print(f"starting {side} ({tree})...", flush=True)
            stack.enter_context(server(tree_command(tree, port, weights), env, port, log, cwd=tree))
            urls[side] = f"http://127.0.0.1:{port}"
            results[f"{side}_tree"] = str(tree)
        clients = {
            side: stack.enter_context(httpx.Client(base_url=u, timeout=300))
            for side, u in urls.items()
        }
        for side in urls:  # warm-up: first embed and click of each server
            one_round(clients[side], pool[0], urls[side], h, w)
        for i in range(args.rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for side in order:
                rounds[side].append(one_round(clients[side], pool[i + 1], urls[side], h, w))
            print(f"round {i + 1}/{args.rounds} done", flush=True)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["rounds"] = rounds
    results["summary"] = summarize(rounds)
    path = ROOT / "bench" / "results" / f"{results['date']}-ab.json"
    path.write_text(json.dumps(results, indent=2))
    print("| figure | before | after | after/before (medians) | median of per-round ratios |")
    print("|---|---|---|---|---|")
    for figure, row in results["summary"].items():
        unit, _ = FIGURES[figure]
        scale = 1000.0 if unit == "s" and row["before"] < 1 else 1.0
        shown = "ms" if scale == 1000.0 else unit
        print(
            f"| {figure} | {row['before'] * scale:.1f} {shown} | {row['after'] * scale:.1f} {shown}"
            f" | {row['ratio']:.2f}x | {row['paired_ratio']:.2f}x |"
        )
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
