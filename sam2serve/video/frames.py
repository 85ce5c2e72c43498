"""Video frames: decode a clip (PyAV) once into a uint8 file on disk, read frames on demand.

Each frame is resized to the model's S x S input exactly as upstream's frame loader does
(PIL `resize((S, S))` of the RGB frame) and appended to `frames.u8`; the session then reads
frames through a read-only memmap, so RAM holds no float frames at all (3 MiB of page cache
per 1024 px frame, reclaimable). Caps: frame count and pixels per frame -> 413 naming the cap,
checked from the container header before any frame is decoded (`probe_video`) and again while
decoding; a file that is not a video, a truncated one, an unknown codec or no frames -> 400/415.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sam2serve.errors import BadRequest, PayloadTooLarge, ServiceError

FRAMES_FILE = "frames.u8"


class UnsupportedMedia(ServiceError):
    """415: the container or codec cannot be decoded by this server."""

    status = 415


@dataclass(frozen=True)
class VideoInfo:
    """What a decoded clip is: frame count, fps, original width and height in pixels."""

    num_frames: int
    fps: float
    width: int
    height: int


class FrameFile:
    """`FrameReader` over `frames.u8`: (num_frames, S, S, 3) uint8, memory-mapped read-only."""

    def __init__(self, path: Path, num_frames: int, size: int) -> None:
        self.path = path
        self.size = size
        self._frames = np.memmap(path, dtype=np.uint8, mode="r", shape=(num_frames, size, size, 3))

    def __len__(self) -> int:
        return int(self._frames.shape[0])

    def frame(self, index: int) -> np.ndarray:
        return np.asarray(self._frames[index])

    @property
    def nbytes_on_disk(self) -> int:
        return int(self._frames.nbytes)


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("RGB").resize((size, size)), dtype=np.uint8)


def too_many_pixels(width: int, height: int, max_pixels: int) -> PayloadTooLarge:
    """413 for frames over SAM2SERVE_VIDEO_MAX_PIXELS."""
    return PayloadTooLarge(
        f"frames are {width}x{height} = {width * height} pixels, over the cap of {max_pixels} "
        "(SAM2SERVE_VIDEO_MAX_PIXELS); downscale the video",
        field="video",
    )


def too_many_frames(max_frames: int, declared: int | None = None) -> PayloadTooLarge:
    """413 for a clip over SAM2SERVE_VIDEO_MAX_FRAMES (`declared`: the header's count)."""
    count = f"{declared} frames" if declared is not None else f"more than {max_frames} frames"
    return PayloadTooLarge(
        f"the video has {count}, over the cap of {max_frames} (SAM2SERVE_VIDEO_MAX_FRAMES); "
        "cut it into shorter clips",
        field="video",
    )


def probe_video(path: Path, *, max_frames: int, max_pixels: int) -> None:
    """Refuse (413) a clip whose frame size or frame count, as its container header states
    them, is over the caps, before any frame is decoded. The count is the header's when it
    has one, else duration x frame rate (refused only beyond one frame of rounding). A file
    PyAV cannot open is left to `decode_video`, which says what is wrong with it."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except Exception:  # not a video, truncated, ...: decode_video answers the 400/415
        return
    with container:
        if not container.streams.video:
            return
        stream = container.streams.video[0]
        context = stream.codec_context
        width, height = (context.width, context.height) if context is not None else (0, 0)
        if width * height > max_pixels:
            raise too_many_pixels(width, height, max_pixels)
        declared = int(stream.frames or 0)
        if declared > max_frames:
            raise too_many_frames(max_frames, declared)
        if declared == 0:
            estimate = _estimated_frames(stream, container)
            if estimate > max_frames + 1:
                raise too_many_frames(max_frames, round(estimate))


def _estimated_frames(stream: Any, container: Any) -> float:
    """duration x average frame rate from the header (0 when either is unknown)."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return 0.0
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # av.time_base: microseconds
    else:
        return 0.0
    return seconds * float(rate)


def write_frames(
    frames: Iterable[np.ndarray], out_dir: Path, size: int, *, max_frames: int, max_pixels: int
) -> tuple[FrameFile, int, int]:
    """Resize each (H, W, 3) uint8 frame to S x S and append it to `out_dir/frames.u8`.

    Returns the reader, and the clip's original (width, height). All frames must share one size.
    """
    path = Path(out_dir) / FRAMES_FILE
    count = 0
    wh: tuple[int, int] | None = None
    with path.open("wb") as out:
        for rgb in frames:
            h, w = int(rgb.shape[0]), int(rgb.shape[1])
            if h * w > max_pixels:
                raise too_many_pixels(w, h, max_pixels)
            if wh is None:
                wh = (w, h)
            elif wh != (w, h):
                raise BadRequest(
                    f"frame {count} is {w}x{h} but frame 0 is {wh[0]}x{wh[1]}: all frames of a "
                    "video must have one size",
                    field="frames",
                )
            count += 1
            if count > max_frames:
                raise too_many_frames(max_frames)
            out.write(_resize(rgb, size).tobytes())
    if count == 0 or wh is None:
        raise BadRequest("the video has no frames: send a clip with at least one", field="video")
    return FrameFile(path, count, size), wh[0], wh[1]


def _decoded(path: Path) -> Iterator[np.ndarray]:
    import av

    try:
        container = av.open(str(path), mode="r")
    except av.error.InvalidDataError as exc:
        raise BadRequest(
            "the upload is not a video PyAV/FFmpeg can read (MP4, WebM, MOV...): "
            f"{exc.strerror or type(exc).__name__}",
            field="video",
        ) from exc
    except av.FFmpegError as exc:
        raise BadRequest(f"cannot open the video: {exc}", field="video") from exc
    with container:
        if not container.streams.video:
            raise BadRequest("the file has no video stream", field="video")
        stream = container.streams.video[0]
        if stream.codec_context is None or stream.codec_context.name in ("", "none"):
            raise UnsupportedMedia(
                "the video's codec is not supported; re-encode it as H.264 MP4", field="video"
            )
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.InvalidDataError as exc:
            raise BadRequest(
                "the video is corrupt or truncated; re-encode or re-upload it", field="video"
            ) from exc
        except av.FFmpegError as exc:
            raise UnsupportedMedia(
                f"the video cannot be decoded ({exc}); re-encode it as H.264 MP4", field="video"
            ) from exc


def video_fps(path: Path) -> float:
    import av

    with av.open(str(path), mode="r") as container:
        rate = container.streams.video[0].average_rate or Fraction(0)
        return float(rate)


def decode_video(
    path: Path, out_dir: Path, size: int, *, max_frames: int, max_pixels: int
) -> tuple[FrameFile, VideoInfo]:
    """Decode the clip at `path` into `out_dir/frames.u8` (S x S uint8 per frame)."""
    reader, width, height = write_frames(
        _decoded(path), out_dir, size, max_frames=max_frames, max_pixels=max_pixels
    )
    return reader, VideoInfo(len(reader), video_fps(path), width, height)
