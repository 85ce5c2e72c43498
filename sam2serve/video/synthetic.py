"""A synthetic clip (moving shapes on a textured background) for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: point prompts (x, y) px of the default 320 x 240 clip on frame 0, one per object: on the
#: disc, on the square, on the background. bench/video.py and the fidelity tests use them.
OBJECT_POINTS: tuple[tuple[float, float], ...] = ((60.0, 120.0), (250.0, 50.0), (160.0, 200.0))
#: a second positive point for object 1 on the clip's middle frame (a correction)
CORRECTION_POINT: tuple[float, float] = (90.0, 125.0)


def synthetic_frames(num_frames: int, width: int = 320, height: int = 240) -> list[np.ndarray]:
    """`num_frames` (H, W, 3) uint8 frames: a disc moving right, a square moving down."""
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack(
        [(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), 96 + 0 * xx], axis=-1
    ).astype(np.uint8)
    frames = []
    for t in range(num_frames):
        rgb = background.copy()
        cx, cy, r = 60 + 12 * t, height // 2, min(width, height) // 6
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (230, 40, 40)
        x0, y0, s = width * 2 // 3, 20 + 8 * t, min(width, height) // 5
        rgb[y0 : y0 + s, x0 : x0 + s] = (30, 200, 60)
        frames.append(rgb)
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """Encode (H, W, 3) uint8 frames as H.264 MP4 (yuv420p) with PyAV."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18"}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)
