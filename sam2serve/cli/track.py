"""`sam2serve track`: prompt objects on one frame of a clip, track them, write the results.

Runs the model in-process by default (weights from --weights-dir / SAM2SERVE_WEIGHTS_DIR) or
asks the server at --url; both give `VideoFrame`s, written as an annotated MP4 (mask overlays,
one colour per object) and, with --masks-dir, one PNG mask per frame and object.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from sam2serve.cli.support import fail, is_handled, one_line
from sam2serve.client.errors import Sam2ServerError
from sam2serve.client.video import VideoFrame
from sam2serve.errors import ServiceError

#: error statuses that are the user's (the clip, the prompts, the options): exit code 2
USAGE_STATUSES = (400, 413, 415, 422)

COLOURS = np.array(
    [(255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0), (200, 80, 255), (0, 220, 220)],
    dtype=np.float32,
)


def _server_frames(
    url: str, api_key: str | None, clip: Path, model: str | None, prompts: list[dict], both: bool
) -> tuple[dict[str, Any], list[VideoFrame]]:
    from sam2serve.client import Sam2Client

    with Sam2Client(url, api_key) as client, client.video_session(clip, model=model) as s:
        return _tracked(s, prompts, both)


def _local_frames(
    clip: Path,
    model: str | None,
    weights_dir: Path | None,
    device: str | None,
    prompts: list[dict],
    both: bool,
) -> tuple[dict[str, Any], list[VideoFrame]]:
    from sam2serve.config import Settings
    from sam2serve.local.segmenter import Segmenter

    # the image runtime stays Meta's exact torch code, as this command always had it: video
    # uses it only for the encoder under SAM2SERVE_VIDEO_PRECISION=fast, where a fast runtime
    # would make this one-shot run wait for its export first
    overrides = {"weights_dir": weights_dir, "device": device, "runtime": "torch"}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    with Segmenter(settings=settings) as seg, seg.video_session(clip, model=model) as s:
        return _tracked(s, prompts, both)


def _tracked(
    session: Any, prompts: list[dict], both: bool
) -> tuple[dict[str, Any], list[VideoFrame]]:
    """The prompts on a video session (HTTP or in-process), then the propagation's frames."""
    for p in prompts:
        session.add_prompt(p["frame"], p["object_id"], points=p["points"], box=p["box"])
    frames = list(session.propagate("both" if both else "forward"))
    return session.info, frames


def _latest(frames: list[VideoFrame]) -> dict[int, VideoFrame]:
    """Last result per frame (with --both, frames seen twice keep the later one)."""
    return {f.frame_index: f for f in frames}


def _overlay(rgb: np.ndarray, frame: VideoFrame | None) -> np.ndarray:
    if frame is None:
        return rgb
    out = rgb.astype(np.float32)
    for k, (obj, mask) in enumerate(zip(frame.object_ids, frame.masks, strict=True)):
        colour = COLOURS[(obj if obj >= 0 else k) % len(COLOURS)]
        out[mask] = 0.5 * out[mask] + 0.5 * colour
    return out.clip(0, 255).astype(np.uint8)


def _input_frames(clip: Path) -> Iterator[np.ndarray]:
    from sam2serve.video.frames import _decoded

    yield from _decoded(clip)


def write_outputs(
    clip: Path, fps: float, frames: list[VideoFrame], output: Path, masks_dir: Path | None
) -> None:
    """Annotated MP4 at `output`; PNG masks `<frame>_obj<id>.png` under `masks_dir`."""
    import av
    from PIL import Image

    by_index = _latest(frames)
    if masks_dir is not None:
        masks_dir.mkdir(parents=True, exist_ok=True)
        for idx, f in by_index.items():
            for obj, mask in zip(f.object_ids, f.masks, strict=True):
                Image.fromarray(mask.astype(np.uint8) * 255).save(
                    masks_dir / f"{idx:05d}_obj{obj}.png"
                )
    output.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(output), mode="w") as container:
        stream = None
        for i, rgb in enumerate(_input_frames(clip)):
            if stream is None:
                stream = container.add_stream("libx264", rate=round(fps) or 25)
                stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                stream.pix_fmt = "yuv420p"
            shown = _overlay(rgb, by_index.get(i))[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(shown, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def track(
    clip: Annotated[Path, typer.Argument(help="Video file (MP4, WebM, MOV...)")],
    frame: Annotated[int, typer.Option("--frame", "-f", help="Frame the prompts are on")] = 0,
    point: Annotated[
        list[str] | None,
        typer.Option("--point", "-p", help="X,Y (positive) or X,Y,neg; repeatable, one object"),
    ] = None,
    box: Annotated[
        list[str] | None,
        typer.Option("--box", "-b", help="X1,Y1,X2,Y2 corner box; each further box is an object"),
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Annotated MP4 to write")] = Path(
        "tracked.mp4"
    ),
    masks_dir: Annotated[
        Path | None, typer.Option("--masks-dir", help="Also write PNG masks per frame/object")
    ] = None,
    both: Annotated[bool, typer.Option(help="Also track backward from the prompted frame")] = True,
    model: Annotated[str | None, typer.Option("--model", "-m", help="sam2_version_id")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Ask this server")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="SAM2SERVE_API_KEY")] = None,
    weights_dir: Annotated[Path | None, typer.Option("--weights-dir")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
) -> None:
    """Track objects through a clip from prompts on one frame; write an annotated MP4.

    Example: sam2serve track clip.mp4 --frame 0 --point 320,240 -o tracked.mp4
    """
    from sam2serve.client.prompt_builder import parse_box, parse_point

    if not clip.is_file():
        fail(f"{clip}: no such file")
    try:
        points = [parse_point(p) for p in point or []]
        boxes = [parse_box(b) for b in box or []]
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    if not points and not boxes:
        fail("give at least one --point or --box on --frame")
    pts = [(float(p[0]), float(p[1]), bool(p[2]) if len(p) > 2 else True) for p in points]
    prompts = [{"frame": frame, "object_id": 1, "points": pts, "box": boxes[0] if boxes else None}]
    prompts += [
        {"frame": frame, "object_id": i + 2, "points": [], "box": b}
        for i, b in enumerate(boxes[1:])
    ]
    try:
        if url:
            info, frames = _server_frames(url, api_key, clip, model, prompts, both)
        else:
            info, frames = _local_frames(clip, model, weights_dir, device, prompts, both)
        write_outputs(clip, float(info["fps"]), frames, output, masks_dir)
    except (Sam2ServerError, ServiceError) as exc:  # the model's or the clip's (re-decoded)
        fail(one_line(exc), 2 if exc.status in USAGE_STATUSES else 1)
    except Exception as exc:
        if not is_handled(exc):
            raise
        fail(one_line(exc), 1)
    typer.echo(str(output))
