"""Cached-click latency while a video propagation streams (or segment-everything runs), on
one real server.

A real server (uvicorn subprocess on 127.0.0.1, real SAM 2.1 hiera_tiny architecture with
seeded random weights) embeds one photo, then:

1. idle: `--clicks` cached clicks (segment_image by image_id, one new point each), one at a
   time, nothing else running -> p50 / p95;
2. busy: a second client uploads a synthetic clip, prompts frame 0 and streams a forward
   propagation (NDJSON); once its first frame arrived, the same clicks run again, and only
   those that finished while the stream was still running count -> p50 / p95, with the
   propagation's seconds per frame meanwhile.

`--during everything` runs segment-everything (32x32 grid, no crops) on another photo in a
loop instead of the propagation, on a second client.

Both phases run in one process against one server, so their ratio is comparable. The target
is click p95 <= 150 ms during a propagation or a segment-everything. Run it on a quiet machine:

    PYTHONPATH=$PWD python bench/video_clicks.py --clicks 60 --frames 40
    PYTHONPATH=$PWD python bench/video_clicks.py --clicks 5 --frames 6      # smoke run
    PYTHONPATH=$PWD python bench/video_clicks.py --clicks 60 --during everything

`--env KEY=VALUE` passes settings to the server (e.g. SAM2SERVE_VIDEO_THREADS=2 to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.load import b64_png, free_port, server, server_env
from bench.run import server_command
from sam2serve.registry import REGISTRY
from sam2serve.testing import write_random_checkpoint
from sam2serve.video.synthetic import synthetic_frames, write_mp4

SPEC = REGISTRY["sam2.1_hiera_tiny"]
PHOTO_SIZE = (1024, 768)  # width, height of the embedded photo


def percentiles(times_s: list[float]) -> dict[str, Any]:
    """p50 / p95 in ms (nearest rank) and the count."""
    if not times_s:
        return {"n": 0, "p50_ms": None, "p95_ms": None}
    ordered = sorted(times_s)
    rank = max(0, int(np.ceil(0.95 * len(ordered))) - 1)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[rank], 1),
    }


def click(http: httpx.Client, image_id: str, rng: np.random.Generator) -> float:
    """One cached click at a random point; its round trip in seconds."""
    w, h = PHOTO_SIZE
    x, y = float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.1, 0.9) * h)
    body = {
        "image_id": image_id,
        "prompts": {"prompts": [{"points": [{"x": x, "y": y, "positive": True}]}]},
        "format": "rle",
    }
    started = time.perf_counter()
    http.post("/sam2/segment_image", json=body).raise_for_status()
    return time.perf_counter() - started


class Background(threading.Thread):
    """Work on its own client while clicks run: `stamps` when each result arrived, `first`
    set once clicks may start, `running()` until it ended; an error is kept for the caller."""

    def __init__(self, name: str, base: str) -> None:
        super().__init__(name=name, daemon=True)
        self.base = base
        self.stamps: list[float] = []
        self.first = threading.Event()
        self.stop = threading.Event()
        self.started_at = 0.0
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=600) as http:
                self.started_at = time.perf_counter()
                self.work(http)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.ended_at = time.perf_counter()
            self.first.set()

    def work(self, http: httpx.Client) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return self.ended_at is None


class Propagation(Background):
    """Streams one forward propagation; clicks start once its first frame arrived."""

    def __init__(self, base: str, session_id: str) -> None:
        super().__init__("propagation", base)
        self.session_id = session_id

    def work(self, http: httpx.Client) -> None:
        path = f"/sam2/video/sessions/{self.session_id}/propagate"
        body = {"direction": "forward", "start_frame": 0, "format": "rle"}
        with http.stream("POST", path, json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.strip():
                    continue
                if "error" in json.loads(line):
                    raise RuntimeError(f"propagation failed: {line}")
                self.stamps.append(time.perf_counter())
                self.first.set()


class Everything(Background):
    """Segment-everything on `image` again and again until `stop`; clicks start at once."""

    def __init__(self, base: str, image: str) -> None:
        super().__init__("everything", base)
        self.image = image

    def work(self, http: httpx.Client) -> None:
        body = {"image": {"type": "base64", "value": self.image}, "format": "rle"}
        self.first.set()
        while not self.stop.is_set():
            http.post("/sam2/segment_everything", json=body).raise_for_status()
            self.stamps.append(time.perf_counter())


def clicks_meanwhile(
    http: httpx.Client, image_id: str, rng: np.random.Generator, work: Background, args: Any
) -> list[float]:
    """Clicks while `work` (a started Propagation/Everything) runs; only those that finished
    before it ended count."""
    work.first.wait()
    busy: list[float] = []
    while work.running() and len(busy) < args.clicks:
        started = time.perf_counter()
        took = click(http, image_id, rng)
        if work.running() or (work.ended_at or 0) >= started + took:
            busy.append(took)
        time.sleep(args.gap_s)
    return busy


def measure_everything(
    base: str, http: httpx.Client, image_id: str, rng: np.random.Generator, args: Any
) -> dict[str, Any]:
    import skimage.data
    from PIL import Image

    other = np.asarray(Image.fromarray(skimage.data.chelsea()).resize(PHOTO_SIZE))
    work = Everything(base, b64_png(other))
    work.start()
    busy = clicks_meanwhile(http, image_id, rng, work, args)
    work.stop.set()
    work.join()
    if work.error is not None:
        raise RuntimeError("segment-everything failed") from work.error
    answers = work.stamps
    return {
        "busy": percentiles(busy),
        "everything": {
            "answers": len(answers),
            "s_per_answer": round((answers[-1] - work.started_at) / max(1, len(answers)), 3)
            if answers
            else None,
        },
    }


def measure(base: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize(PHOTO_SIZE))
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=120) as http:
        body = {"image": {"type": "base64", "value": b64_png(photo)}}
        image_id = http.post("/sam2/embed_image", json=body).raise_for_status().json()["image_id"]
        for _ in range(args.warmup):
            click(http, image_id, rng)
        idle = []
        for _ in range(args.clicks):
            idle.append(click(http, image_id, rng))
            time.sleep(args.gap_s)
        out["idle"] = percentiles(idle)
        if args.during == "everything":
            return {**out, **measure_everything(base, http, image_id, rng, args)}

        # a second client: open a session on a clip, prompt frame 0, stream the propagation
        clip = write_mp4(
            work / "clip.mp4", synthetic_frames(args.frames, args.width, args.height), fps=10
        )
        with httpx.Client(base_url=base, timeout=600) as video:
            with clip.open("rb") as f:
                files = {"video": ("clip.mp4", f, "video/mp4")}
                session = video.post("/sam2/video/sessions", files=files).raise_for_status().json()
            sid = session["session_id"]
            prompt = {
                "frame_index": 0,
                "object_id": 1,
                "points": [{"x": 60.0 * args.width / 320, "y": args.height / 2, "positive": True}],
                "format": "rle",
            }
            video.post(f"/sam2/video/sessions/{sid}/prompts", json=prompt).raise_for_status()
            stream = Propagation(base, sid)
            stream.start()
            busy = clicks_meanwhile(http, image_id, rng, stream, args)
            stream.join()
            if stream.error is not None:
                raise RuntimeError("the propagation failed") from stream.error
            video.delete(f"/sam2/video/sessions/{sid}")
        stamps = stream.stamps
        out["busy"] = percentiles(busy)
        out["propagation"] = {
            "frames": len(stamps),
            "first_frame_s": round(stamps[0] - stream.started_at, 3),
            "s_per_frame": round((stamps[-1] - stamps[0]) / max(1, len(stamps) - 1), 3),
        }
        if len(busy) < args.clicks:
            out["note"] = (
                f"the propagation ended after {len(busy)} of {args.clicks} clicks: "
                "use a longer clip (--frames) for more samples"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=60, help="clicks per phase")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gap-s", type=float, default=0.05, help="pause between clicks")
    parser.add_argument(
        "--during", choices=["video", "everything"], default="video", help="the background work"
    )
    parser.add_argument("--frames", type=int, default=40, help="frames of the synthetic clip")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--runtime", default="auto", help="the server's image runtime")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sam2serve-bench-video-clicks-"))
    weights = work / "weights"
    write_random_checkpoint(SPEC, weights, seed=1)
    cache = Path(tempfile.gettempdir()) / "sam2serve-bench-runtime"
    env = {
        **server_env(weights, cache, SPEC.model_id, args.runtime),
        **dict(item.split("=", 1) for item in args.env),
    }
    port = free_port()
    with server(server_command(port, weights), env, port, work / "server.log"):
        result = measure(f"http://127.0.0.1:{port}", args, work)
    result = {
        "model": SPEC.model_id,
        "runtime": args.runtime,
        "server_env": args.env,
        "during": args.during,
        "clip": f"{args.frames} frames {args.width}x{args.height}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        **result,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    idle, busy = result["idle"], result["busy"]
    meanwhile = (
        f"propagation {result['propagation']['s_per_frame']} s/frame"
        if args.during == "video"
        else f"segment-everything {result['everything']['s_per_answer']} s/answer"
    )
    print(
        f"click p50/p95 idle {idle['p50_ms']}/{idle['p95_ms']} ms; during {args.during} "
        f"{busy['p50_ms']}/{busy['p95_ms']} ms (n={busy['n']}, target p95 <= 150 ms); "
        f"{meanwhile}"
    )


if __name__ == "__main__":
    main()
