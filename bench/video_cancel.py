"""CPU a server burns after a propagation's client disconnects, with many objects.

One server process (seeded random weights, torch runtime): a session on a synthetic clip,
`--objects` objects prompted on frame 0, then a propagation whose client closes the
connection either `--after` seconds after sending the request (before the first frame
arrives: the server is consolidating the objects' prompts) or as soon as the first frame
line arrives (`--after first`: the server is tracking frame 1, one object at a time).
Read from /proc: the server's CPU seconds in the `--window` seconds after the disconnect,
and when the session was free again (DELETE answers 204 instead of 409).

    PYTHONPATH=$PWD python -m bench.video_cancel --objects 200 --after 0.5

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

from bench.serving import cpu_seconds, machine, server, wait_ready


def _disconnecting_propagate(url: str, session_id: str, after: str) -> float:
    """Start a propagation on a raw socket, close it; returns the time of the close."""
    parsed = urlparse(url)
    body = json.dumps({"direction": "forward", "format": "rle"}).encode()
    head = (
        f"POST /sam2/video/sessions/{session_id}/propagate HTTP/1.1\r\n"
        f"Host: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((parsed.hostname, parsed.port))
    sock.sendall(head + body)
    if after == "first":
        seen = b""
        sock.settimeout(600)
        while b'"frame_index"' not in seen:
            chunk = sock.recv(65536)
            if not chunk:
                break
            seen += chunk
    else:
        time.sleep(float(after))
    sock.close()
    return time.monotonic()


def run(model: str, objects: int, frames: int, after: str, window: float) -> dict:
    from sam2serve.video.synthetic import synthetic_frames, write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        clip = write_mp4(Path(tmp) / "clip.mp4", synthetic_frames(frames)).read_bytes()
    env = {"SAM2SERVE_RUNTIME": "torch", "SAM2SERVE_VIDEO_MAX_OBJECTS": str(max(16, objects))}
    with server(model, env) as (url, pid), httpx.Client(base_url=url, timeout=600) as http:
        wait_ready(url)
        files = {"video": ("clip.mp4", clip, "video/mp4")}
        created = http.post("/sam2/video/sessions", files=files)
        created.raise_for_status()
        sid = created.json()["session_id"]
        base = f"/sam2/video/sessions/{sid}"
        started = time.perf_counter()
        for obj in range(objects):
            x, y = 10 + (obj * 37) % 300, 10 + (obj * 53) % 220
            prompt = {"frame_index": 0, "object_id": obj, "points": [{"x": x, "y": y}]}
            prompt["format"] = "rle"  # cheaper to encode than polygons for many objects
            r = http.post(f"{base}/prompts", json=prompt)
            r.raise_for_status()
        prompting_s = time.perf_counter() - started
        closed_at = _disconnecting_propagate(url, sid, after)
        cpu0 = cpu_seconds(pid)
        freed_after = None
        trace = []  # (seconds after the disconnect, CPU seconds burnt since)
        while time.monotonic() - closed_at < window:
            if freed_after is None and http.delete(base).status_code == 204:
                freed_after = time.monotonic() - closed_at
            time.sleep(0.25)
            trace.append((round(time.monotonic() - closed_at, 2), cpu_seconds(pid) - cpu0))
        burnt = cpu_seconds(pid) - cpu0
    return {
        "model": model,
        "objects": objects,
        "frames": frames,
        "disconnect": "after the first frame" if after == "first" else f"after {after} s",
        "prompting_s": round(prompting_s, 1),
        "cpu_s_in_window": round(burnt, 2),
        "window_s": window,
        "session_free_after_s": None if freed_after is None else round(freed_after, 2),
        "cpu_trace": [(t, round(c, 2)) for t, c in trace[:: max(1, len(trace) // 10)]],
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_tiny")
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--after", default="0.5", help="seconds, or 'first' (first frame line)")
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(run(args.model, args.objects, args.frames, args.after, args.window)))


if __name__ == "__main__":
    main()
