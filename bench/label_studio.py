"""How many video frames one Label Studio predict call can track on this machine.

Runs the Label Studio backend in process (`LabelStudioBackend.predict`, as the route does) on
the real SAM 2.1 hiera_tiny architecture with seeded random weights: a synthetic clip served
by a stand-in Label Studio media route, one warm call per object count with the keyframe(s)
on frame 1, no frame cap and the default time budget (SAM2SERVE_LABEL_STUDIO_BUDGET_S, 75 s).
It prints, per object count, the frames the call tracked (what fits) and the call's
seconds (what Label Studio waits; its default predict timeout is 100 s).

    PYTHONPATH=$PWD python bench/label_studio.py --frames 40 --objects 1 2 [--precision fp32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from sam2serve.config import Settings
from sam2serve.registry import REGISTRY
from sam2serve.testing import write_random_checkpoint
from sam2serve.video.config import VideoSettings
from sam2serve.video.synthetic import synthetic_frames, write_mp4
from sam2serve.wiring import build_services
from tests.helpers_label_studio import media_server

CONFIG = """<View><Video name="video" value="$video" framerate="10"/>
<VideoRectangle name="box" toName="video"/></View>"""
BOXES = [[8.0, 30.0, 20.0, 40.0], [65.0, 5.0, 17.5, 25.0], [40.0, 60.0, 20.0, 30.0]]


def region(i: int) -> dict:
    x, y, w, h = BOXES[i]
    keyframe = {"frame": 1, "enabled": True, "x": x, "y": y, "width": w, "height": h}
    return {"id": f"o{i}", "type": "videorectangle", "value": {"sequence": [keyframe]}}


async def one_call(settings: Settings, video: VideoSettings, objects: int) -> dict:
    services = build_services(settings, video_settings=video)
    backend = services.label_studio
    await services.video.tracker(services.images.spec_for(None))  # loaded: a warm call
    body = {
        "tasks": [{"id": 1, "data": {"video": "/data/upload/1/clip.mp4"}}],
        "label_config": CONFIG,
        "params": {"context": {"result": [region(i) for i in range(objects)]}},
    }
    started = time.perf_counter()
    answer = await backend.predict(body, "public")
    total = time.perf_counter() - started
    await services.aclose()
    result = answer["results"][0]
    frames = len(result["result"][0]["value"]["sequence"])
    return {
        "objects": objects,
        "frames": frames,
        "call_s": round(total, 1),
        "note": result.get("note"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        write_random_checkpoint(REGISTRY["sam2.1_hiera_tiny"], weights, seed=1)
        clip = write_mp4(Path(tmp) / "clip.mp4", synthetic_frames(args.frames, 640, 480), fps=10)
        with media_server({"/data/upload/1/clip.mp4": clip.read_bytes()}, "t") as media:
            settings = Settings(
                weights_dir=weights, default_model="sam2.1_hiera_tiny", allow_download=False,
                device="cpu", preload=False, label_studio_url=media.url,
                label_studio_api_key="t", label_studio_video_max_frames=100_000,
                runtime_cache_dir=Path(tmp) / "rt",
            )  # fmt: skip
            video = VideoSettings(precision=args.precision)
            rows = [asyncio.run(one_call(settings, video, n)) for n in args.objects]
    print(json.dumps({
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(), "precision": args.precision, "clip": "640x480",
        "rows": rows,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
