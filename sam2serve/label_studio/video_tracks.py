"""VideoRectangle keyframes -> a sam2serve video session -> each object's track as a Label
Studio `sequence` of per-frame boxes (1-based frames at the config's framerate, %).

One predict call: the clip is fetched and opened as a session (kept for the task, so the
next call reuses its decoded frames while it lives), every object is prompted with its
keyframe boxes (`VideoObject.prompts`), and the session is propagated forward from where
tracking starts (`VideoObject.start`: the first keyframe, or the end of a box-on-every-frame
run such as an accepted earlier answer, so asking again continues) for at most
SAM2SERVE_LABEL_STUDIO_VIDEO_MAX_FRAMES frames and SAM2SERVE_LABEL_STUDIO_BUDGET_S seconds
(counted from the call's start; a frame is not begun when the last one's duration would take
it past the budget), so the answer comes inside Label Studio's predict timeout; a clip cut
short says so.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from sam2serve.config import Settings
from sam2serve.errors import NotInCache
from sam2serve.label_studio.labeling_config import Control, MediaObject
from sam2serve.label_studio.media import LabelStudioMedia
from sam2serve.label_studio.regions import VideoObject, pct_box_to_pixels
from sam2serve.label_studio.results import mask_box_pct, pick_label
from sam2serve.media import postprocess
from sam2serve.media.fetch import ByteCap
from sam2serve.video.schema import FrameResult, PromptRequest, PropagateRequest, SessionInfo
from sam2serve.video.service import CLIP_ADVICE, UPLOAD_CAP_SETTING, VideoService

FRAMES_SETTING = "SAM2SERVE_LABEL_STUDIO_VIDEO_MAX_FRAMES"
BUDGET_SETTING = "SAM2SERVE_LABEL_STUDIO_BUDGET_S"


class FrameClock:
    """Label Studio frame numbers (1-based, at `framerate`) <-> the clip's frame indices
    (0-based, at the decoded clip's `fps`; equal numbering when fps is unknown or equal)."""

    def __init__(self, framerate: float, fps: float, num_frames: int) -> None:
        self.framerate, self.fps, self.num_frames = framerate, fps, num_frames

    def to_index(self, frame: int) -> int:
        i = frame - 1 if self.fps <= 0 else round((frame - 1) * self.fps / self.framerate)
        return min(max(i, 0), self.num_frames - 1)

    def to_frame(self, index: int) -> int:
        return index + 1 if self.fps <= 0 else round(index * self.framerate / self.fps) + 1

    def frames_count(self) -> int:
        return self.to_frame(self.num_frames - 1)


class VideoTracks:
    def __init__(self, video: VideoService, media: LabelStudioMedia, settings: Settings) -> None:
        self.video = video
        self.media = media
        self.settings = settings
        self._sessions: dict[tuple[str, str], str] = {}  # (namespace, clip key) -> session

    async def track(
        self,
        task: dict[str, Any],
        video: MediaObject,
        control: Control,
        objects: list[VideoObject],
        namespace: str,
        deadline: float,
    ) -> dict[str, Any]:
        """`deadline`: monotonic seconds by which the call must have its answer."""
        info = await self._session(task, video, namespace)
        sid = info.session_id
        clock = FrameClock(video.framerate, info.fps, info.num_frames)
        for object_id, obj in enumerate(objects):
            for keyframe in obj.prompts():
                box = pct_box_to_pixels(keyframe.box, info.width, info.height, "keyframe")
                prompt = PromptRequest(
                    frame_index=clock.to_index(keyframe.frame), object_id=object_id, box=box
                )
                await self.video.add_prompt(namespace, sid, prompt)
        first = min(clock.to_index(o.start()) for o in objects)
        cap = self.settings.label_studio_video_max_frames
        request = PropagateRequest(start_frame=first, max_frames=cap, format="rle")
        tracked: dict[int, FrameResult] = {}
        stream = await self.video.propagate(namespace, sid, request)
        timed_out = False
        step_started = time.monotonic()
        try:
            async for frame in stream:
                tracked[frame.frame_index] = frame
                now = time.monotonic()
                step, step_started = now - step_started, now
                if len(tracked) >= cap + 1:
                    break
                if now + step > deadline:  # the next frame would likely end past it
                    timed_out = True
                    break
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        last = max(tracked) if tracked else first
        result = [
            self._region(obj, object_id, control, video, clock, tracked, info)
            for object_id, obj in enumerate(objects)
        ]
        answer: dict[str, Any] = {
            "result": result,
            "score": _mean([r.pop("_score") for r in result]),
            "model_version": "",
        }
        if last < info.num_frames - 1:
            why = (
                f"the time budget ({BUDGET_SETTING}={self.settings.label_studio_budget_s:g} s)"
                if timed_out
                else f"the cap of {cap} frames per call ({FRAMES_SETTING})"
            )
            answer["note"] = (
                f"tracked frames {clock.to_frame(first)}-{clock.to_frame(last)} of "
                f"{clock.frames_count()}: cut short by {why}; to go on, accept these boxes "
                "(they become keyframes) and ask again: tracking continues after them"
            )
            for region in result:
                region["meta"] = {"text": [answer["note"]]}
        return answer

    def _region(
        self,
        obj: VideoObject,
        object_id: int,
        control: Control,
        video: MediaObject,
        clock: FrameClock,
        tracked: dict[int, FrameResult],
        info: SessionInfo,
    ) -> dict[str, Any]:
        """One object's track: its keyframes as drawn, every tracked frame after its first
        keyframe as the mask's box; a frame where the mask vanished ends the box's span
        (`enabled: false`) until it comes back."""
        keyframes = {k.frame: k.box for k in obj.keyframes}
        start = min(keyframes)
        sequence: dict[int, dict[str, Any]] = {}
        scores = []
        visible = True
        previous: dict[str, float] = keyframes[start]
        for index in sorted(tracked):
            frame = clock.to_frame(index)
            if frame < start:
                continue
            found = next((o for o in tracked[index].objects if o.object_id == object_id), None)
            mask = postprocess.rle_to_mask(found.mask.model_dump()) if found else None  # type: ignore[union-attr]
            box = mask_box_pct(mask.astype(bool)) if mask is not None else None
            if found is not None:
                scores.append(found.score)
            if box is None:
                if visible:
                    sequence[frame] = {**previous, "enabled": False}
                visible = False
                continue
            visible, previous = True, box
            sequence[frame] = {**box, "enabled": True}
        for frame, box in keyframes.items():  # the annotator's boxes stay as drawn
            sequence[frame] = {**box, "enabled": True}
        items = [
            {"frame": f, **sequence[f], "rotation": 0, "time": (f - 1) / video.framerate}
            for f in sorted(sequence)
        ]
        value: dict[str, Any] = {
            "framesCount": clock.frames_count(),
            "duration": info.num_frames / info.fps if info.fps > 0 else 0,
            "sequence": items,
        }
        label = pick_label(control, obj.label)
        if label is not None:
            value["labels"] = [label]
        return {
            "id": obj.region_id,
            "from_name": control.name,
            "to_name": video.name,
            "type": "videorectangle",
            "origin": "prediction",
            "value": value,
            "_score": _mean(scores),
        }

    async def _session(
        self, task: dict[str, Any], video: MediaObject, namespace: str
    ) -> SessionInfo:
        """The task clip's open session, reset; else a new one from the fetched clip."""
        reference = str((task.get("data") or {}).get(video.data_key))
        key = hashlib.sha256(f"{self.media.base}\n{reference}".encode()).hexdigest()
        known = self._sessions.get((namespace, key))
        if known is not None:
            try:
                await self.video.reset(namespace, known)
                return self.video.session_info(namespace, known)
            except NotInCache:
                self._sessions.pop((namespace, key), None)
        field = f"tasks[{task.get('id')}].data.{video.data_key}"
        self.video.admit(namespace)  # 429 / 503 before the clip is downloaded
        cap = ByteCap(self.video.settings.max_upload_bytes, UPLOAD_CAP_SETTING, CLIP_ADVICE)
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        data = await self.media.fetch(reference, task_id, cap=cap, field=field)
        with tempfile.TemporaryDirectory(prefix="sam2-ls-clip-") as tmp:
            clip = Path(tmp) / "clip"
            clip.write_bytes(data)
            del data
            info = await self.video.create_from_file(clip, namespace, None)
        self._sessions[(namespace, key)] = info.session_id
        return info


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
