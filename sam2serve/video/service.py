"""Video sessions use case: create from a clip, prompt objects, propagate, read masks.

Flow: route/SDK -> `VideoService` -> frames (decode once to disk) -> `VideoTracker`
(runtime, Meta's video predictor methods on per-session state) -> masks -> `FrameResult`.
All model work runs on the video lane (its own single worker thread with a bounded queue),
so image clicks never wait behind a propagation step.

Refused before work: a new session is admitted (count caps, per key and in all, and the
memory budget) before its upload is decoded, a clip's frame size and count are read from the
container header before any frame is decoded, and a prompt for one object more than
`SAM2SERVE_VIDEO_MAX_OBJECTS` is refused before any model call. A propagation whose client
goes away stops between two objects of the frame in progress (`VideoTracker.stop`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from sam2serve.errors import BadRequest, Conflict, NotInCache, PayloadTooLarge
from sam2serve.image.service import ImageService
from sam2serve.media import postprocess
from sam2serve.media.decode import load_image
from sam2serve.media.fetch import ByteCap
from sam2serve.registry import ModelSpec
from sam2serve.runtime.factory import video_parts
from sam2serve.runtime.video_tracker import FrameMasks, VideoTracker, build_video_model
from sam2serve.runtime.weights import ensure_checkpoint
from sam2serve.scheduling.lanes import Lane
from sam2serve.scheduling.priority import worker_init
from sam2serve.video.config import VideoSettings
from sam2serve.video.frames import (
    VideoInfo,
    decode_video,
    probe_video,
    too_many_pixels,
    write_frames,
)
from sam2serve.video.schema import (
    CreateSessionRequest,
    FrameResult,
    MaskFormat,
    ObjectMask,
    PromptRequest,
    PropagateRequest,
    SessionInfo,
)
from sam2serve.video.sessions import Session, SessionStore
from sam2serve.wire import RleMask

UPLOAD_CAP_SETTING = "SAM2SERVE_VIDEO_MAX_UPLOAD_BYTES"
CLIP_ADVICE = "send a shorter or smaller clip"


def clip_too_large(cap: int, field: str = "video") -> PayloadTooLarge:
    """413 for an uploaded clip over the video upload cap."""
    return PayloadTooLarge(
        f"the video is over {cap} bytes ({UPLOAD_CAP_SETTING}): {CLIP_ADVICE}", field=field
    )


class VideoService:
    def __init__(self, images: ImageService, settings: VideoSettings | None = None) -> None:
        self.images = images
        self.settings = settings or VideoSettings()
        s = self.settings
        per_key = s.max_sessions_per_key if images.settings.api_keys else 0
        self.store = SessionStore(s.max_sessions, s.ttl_s, s.memory_bytes, per_key)
        # below the click lane's CPU priority: a propagation must not slow clicks down
        self.lane = Lane(
            "video", 1, s.queue, retry_after_s=2.0, initializer=worker_init(s.nice, s.threads)
        )
        self._trackers: dict[str, VideoTracker] = {}
        self._load_lock = asyncio.Lock()

    def close(self) -> None:
        self.store.close_all()
        self.lane.shutdown()

    def describe(self) -> dict[str, Any]:
        return {
            **self.store.describe(),
            "precision": self.settings.precision,
            "parts": {model_id: t.describe() for model_id, t in self._trackers.items()},
        }

    # -- sessions ------------------------------------------------------------------------

    async def tracker(self, spec: ModelSpec) -> VideoTracker:
        async with self._load_lock:
            found = self._trackers.get(spec.model_id)
            if found is None:
                pool = self.images.pool

                fast = self.settings.precision == "fast"

                def load() -> VideoTracker:
                    ckpt = ensure_checkpoint(
                        spec, pool.weights_dir, allow_download=pool.allow_download
                    )
                    model = build_video_model(spec, ckpt, pool.device)
                    precision = "bf16" if self.settings.precision == "bf16" else "fp32"
                    # fast: memory attention + memory encoder compiled (exported once)
                    parts = (
                        video_parts(
                            self.images.settings, spec, ckpt, pool.device, self.settings.threads
                        )
                        if fast
                        else None
                    )
                    return VideoTracker(spec.model_id, model, pool.device, precision, parts=parts)

                found = await asyncio.to_thread(load)
                if fast:
                    runtime = await pool.get(spec)  # the image runtime's (fast) encoder
                    # the encoder only: no click-decoder preparation per frame
                    found.embed = getattr(runtime, "encode", runtime.embed)
                self._trackers[spec.model_id] = found
            return found

    def admit(self, namespace: str) -> None:
        """Raise now (429 / 503 + Retry-After) when `namespace` could not open a session, so
        an upload is refused before it is read."""
        self.store.admit(namespace)

    async def create_from_file(self, path: Path, namespace: str, model: str | None) -> SessionInfo:
        """`path`: an uploaded clip; it is decoded into the session's own directory, after
        its header's frame size and count are checked."""
        with self.store.reserve(namespace):  # counted from here: no overshooting the caps
            return await self._from_file(path, namespace, model)

    async def _from_file(self, path: Path, namespace: str, model: str | None) -> SessionInfo:
        s = self.settings
        await asyncio.to_thread(probe_video, path, max_frames=s.max_frames, max_pixels=s.max_pixels)
        return await self._create(
            namespace,
            model,
            lambda out, size: decode_video(
                path,
                out,
                size,
                max_frames=self.settings.max_frames,
                max_pixels=self.settings.max_pixels,
            ),
        )

    async def create(self, request: CreateSessionRequest, namespace: str) -> SessionInfo:
        """A session from a clip URL or a list of frames (JSON)."""
        with self.store.reserve(namespace):  # before the clip is fetched or any frame decoded
            return await self._from_request(request, namespace)

    async def _from_request(self, request: CreateSessionRequest, namespace: str) -> SessionInfo:
        if request.url is not None:
            cap = ByteCap(self.settings.max_upload_bytes, UPLOAD_CAP_SETTING, CLIP_ADVICE)
            data = await self.images.fetcher.fetch(request.url, cap=cap, field="url")
            with tempfile.TemporaryDirectory(prefix="sam2-video-dl-") as tmp:
                clip = Path(tmp) / "clip"
                clip.write_bytes(data)
                del data
                return await self._from_file(clip, namespace, request.sam2_version_id)
        assert request.frames is not None
        if len(request.frames) > self.settings.max_frames:
            raise BadRequest(
                f"frames: {len(request.frames)} frames is over the cap of "
                f"{self.settings.max_frames} (SAM2SERVE_VIDEO_MAX_FRAMES)",
                field="frames",
            )
        max_pixels = self.settings.max_pixels

        def check_header(width: int, height: int) -> None:
            if width * height > max_pixels:
                raise too_many_pixels(width, height, max_pixels)

        rgbs = []
        for item in request.frames:
            loaded = await load_image(
                item.type,
                item.value,
                settings=self.images.settings,
                fetcher=self.images.fetcher,
                check_header=check_header,
            )
            rgbs.append(loaded.rgb)
        fps = 0.0

        def write(out: Path, size: int) -> tuple[Any, VideoInfo]:
            reader, w, h = write_frames(
                rgbs,
                out,
                size,
                max_frames=self.settings.max_frames,
                max_pixels=self.settings.max_pixels,
            )
            return reader, VideoInfo(len(reader), fps, w, h)

        return await self._create(namespace, request.sam2_version_id, write)

    async def _create(self, namespace: str, model: str | None, produce: Any) -> SessionInfo:
        """Decode the clip (`produce`) on the video lane and add the session; the caller holds
        its reservation (`SessionStore.reserve`)."""
        spec = self.images.spec_for(model)
        tracker = await self.tracker(spec)
        workdir = tempfile.TemporaryDirectory(prefix="sam2-video-")
        try:
            frames, info = await self.lane.run(
                produce, Path(workdir.name), tracker.image_size, tenant=namespace
            )
        except BaseException:
            workdir.cleanup()
            raise
        state = tracker.new_state(frames, info.height, info.width, self.settings.feature_bytes)
        session = Session(self.store.new_id(), namespace, tracker, workdir, frames, info, state)
        self.store.add(session)
        return SessionInfo(
            session_id=session.session_id,
            model_id=spec.model_id,
            num_frames=info.num_frames,
            fps=info.fps,
            width=info.width,
            height=info.height,
        )

    def session_info(self, namespace: str, session_id: str) -> SessionInfo:
        """An open session's description (404 when it is gone)."""
        session = self.store.get(namespace, session_id)
        i = session.info
        return SessionInfo(
            session_id=session.session_id,
            model_id=session.tracker.model_id,
            num_frames=i.num_frames,
            fps=i.fps,
            width=i.width,
            height=i.height,
        )

    def delete(self, namespace: str, session_id: str) -> None:
        self.store.delete(namespace, session_id)

    # -- prompts and results -------------------------------------------------------------

    async def add_prompt(
        self, namespace: str, session_id: str, request: PromptRequest
    ) -> FrameResult:
        session = self.store.get(namespace, session_id)
        _check_frame(session, request.frame_index, "frame_index")
        points = labels = box = mask = None
        if request.points:
            points = np.array([[p.x, p.y] for p in request.points], dtype=np.float32)
            labels = np.array([1 if p.positive else 0 for p in request.points], dtype=np.int32)
        if request.box is not None:
            box = np.array(request.box.corners(), dtype=np.float32)
        if request.mask is not None:
            mask = _rle_mask(request.mask, session.info)
        self._check_objects(session, request.object_id)
        async with _exclusive(session):
            fm = await self._guarded(
                session,
                lambda: session.tracker.add_prompt(
                    session.state,
                    request.frame_index,
                    request.object_id,
                    points=points,
                    labels=labels,
                    box=box,
                    mask=mask,
                ),
            )
            session.record(fm)
        return frame_result(fm.frame_index, fm.object_ids, fm.logits > 0, fm.scores, request.format)

    async def propagate(
        self, namespace: str, session_id: str, request: PropagateRequest
    ) -> AsyncIterator[FrameResult]:
        """Frames as they are computed; closing the iterator cancels the remaining work."""
        session = self.store.get(namespace, session_id)
        if not session.tracker.prompted_frames(session.state):
            raise BadRequest(
                "the session has no prompts yet: POST .../prompts with an object first",
                field="session_id",
            )
        if request.start_frame is not None:
            _check_frame(session, request.start_frame, "start_frame")
        if session.lock.locked():
            await _exclusive(session).__aenter__()  # raises the 409 before the stream starts
        directions = {"forward": [False], "backward": [True], "both": [False, True]}
        return self._stream(session, request, directions[request.direction])

    async def _stream(
        self, session: Session, request: PropagateRequest, reverses: list[bool]
    ) -> AsyncIterator[FrameResult]:
        async with _exclusive(session):
            for reverse in reverses:
                steps: Iterator[FrameMasks] = session.tracker.propagate(
                    session.state, request.start_frame, request.max_frames, reverse
                )
                try:
                    while True:
                        fm = await self._guarded(session, next, steps, None, stoppable=True)
                        if fm is None:
                            break
                        session.record(fm)
                        session.last_used = time.monotonic()
                        yield frame_result(
                            fm.frame_index, fm.object_ids, fm.logits > 0, fm.scores, request.format
                        )
                finally:
                    steps.close()  # no step is running here: `_guarded` waited for it

    def _check_objects(self, session: Session, object_id: int) -> None:
        """413 before any model call when `object_id` would be one object more than the cap."""
        ids = session.tracker.object_ids(session.state)
        cap = self.settings.max_objects
        if object_id not in ids and len(ids) >= cap:
            raise PayloadTooLarge(
                f"this session already tracks {len(ids)} objects, the cap per session is {cap} "
                "(SAM2SERVE_VIDEO_MAX_OBJECTS): prompt an existing object_id, remove one "
                "(DELETE .../objects/{object_id}), or open another session",
                field="object_id",
            )

    async def _guarded(self, session: Session, fn: Any, *args: Any, stoppable: bool = False) -> Any:
        """Run a session step on the video lane. If the caller is cancelled (client gone),
        wait for the step in flight before letting go of the session, so a step never runs
        while another request holds the session; a `stoppable` step (propagation) is told
        to stop first, so it ends before its next per-object model call."""
        task = asyncio.ensure_future(self.lane.run(fn, *args, tenant=session.namespace))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if stoppable:
                session.tracker.stop(session.state)
            # a streaming response is cancelled through an anyio cancel scope, which cancels
            # every later await too: shielded, so the step really ends before we let go
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
            session.tracker.resume(session.state)
            if not task.cancelled():
                task.exception()  # retrieved (e.g. `Stopped`): nobody else will read it
            raise

    def frame(
        self, namespace: str, session_id: str, frame_index: int, fmt: MaskFormat
    ) -> FrameResult:
        session = self.store.get(namespace, session_id)
        _check_frame(session, frame_index, "frame_index")
        stored = session.results.get(frame_index)
        if stored is None:
            return FrameResult(frame_index=frame_index, objects=[])
        masks = stored.masks(session.info.height, session.info.width)
        return frame_result(frame_index, stored.object_ids, masks, stored.scores, fmt)

    async def remove_object(self, namespace: str, session_id: str, object_id: int) -> None:
        session = self.store.get(namespace, session_id)
        if object_id not in session.tracker.object_ids(session.state):
            raise NotInCache(
                f"object_id {object_id} is not in this session (objects: "
                f"{session.tracker.object_ids(session.state)})",
                field="object_id",
            )
        async with _exclusive(session):
            await self._guarded(session, session.tracker.remove_object, session.state, object_id)
            session.forget_results()

    async def reset(self, namespace: str, session_id: str) -> None:
        session = self.store.get(namespace, session_id)
        async with _exclusive(session):
            await self._guarded(session, session.tracker.reset, session.state)
            session.forget_results()


class _exclusive:  # noqa: N801 - used like a context manager function
    """Hold a session for one operation; a second concurrent one gets 409 at once."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def __aenter__(self) -> None:
        if self.session.lock.locked():
            raise Conflict(
                f"video session {self.session.session_id!r} is busy with another request "
                "(e.g. a propagation); wait for it or close its stream",
                field="session_id",
            )
        await self.session.lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.session.lock.release()


def _check_frame(session: Session, index: int, field: str) -> None:
    n = session.info.num_frames
    if not 0 <= index < n:
        raise BadRequest(
            f"{field} {index} is out of range: the video has {n} frames (0..{n - 1})", field=field
        )


def _rle_mask(rle: RleMask, info: VideoInfo) -> np.ndarray:
    if list(rle.size) != [info.height, info.width]:
        raise BadRequest(
            f"mask.size is {rle.size}; the video's frames are [height, width] = "
            f"[{info.height}, {info.width}]",
            field="mask",
        )
    try:
        return postprocess.rle_to_mask(rle.model_dump()).astype(bool)
    except Exception as exc:  # malformed counts
        raise BadRequest(f"mask.counts is not valid COCO RLE: {exc}", field="mask") from exc


def frame_result(
    frame_index: int, object_ids: list[int], masks: np.ndarray, scores: np.ndarray, fmt: MaskFormat
) -> FrameResult:
    """masks: (N, H, W) bool for the N objects -> the wire shape, polygons or RLE."""
    objects = []
    for obj, mask, score in zip(object_ids, masks, scores, strict=True):
        if fmt == "rle":
            encoded: Any = RleMask(**postprocess.mask_to_rle(mask))
        else:
            encoded = postprocess.mask_to_polygons(mask)
        objects.append(ObjectMask(object_id=int(obj), mask=encoded, score=float(score)))
    return FrameResult(frame_index=int(frame_index), objects=objects)
