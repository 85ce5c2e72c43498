"""Open video sessions: per API-key namespace, idle TTL, count caps (all keys, and per key),
memory budget.

A session owns a temporary directory (the decoded frame file), the tracker state (upstream
layout: per-object prompts, outputs and memories, plus the per-frame feature cache) and the
latest masks of every frame it has seen (bit-packed). Expired sessions are swept on every
store access; closing a session removes its directory.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam2serve.errors import Conflict, NotInCache, TooManyRequests, Unavailable
from sam2serve.runtime.video_tracker import FrameMasks, VideoTracker
from sam2serve.video.frames import FrameFile, VideoInfo


@dataclass
class StoredFrame:
    """Latest masks of one frame: object ids, bit-packed (N, H, W) masks, scores (N,)."""

    object_ids: list[int]
    packed: np.ndarray
    scores: np.ndarray

    def masks(self, height: int, width: int) -> np.ndarray:
        n = len(self.object_ids)
        flat = np.unpackbits(self.packed, count=n * height * width)
        return flat.reshape(n, height, width).astype(bool)


@dataclass
class Session:
    session_id: str
    namespace: str
    tracker: VideoTracker
    workdir: tempfile.TemporaryDirectory
    frames: FrameFile
    info: VideoInfo
    state: dict[str, Any]
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    results: dict[int, StoredFrame] = field(default_factory=dict)

    def record(self, fm: FrameMasks) -> None:
        masks = fm.logits > 0
        self.results[fm.frame_index] = StoredFrame(fm.object_ids, np.packbits(masks), fm.scores)

    def forget_results(self) -> None:
        self.results.clear()

    @property
    def nbytes(self) -> int:
        features, tracked = self.tracker.state_bytes(self.state)
        stored = sum(r.packed.nbytes for r in self.results.values())
        return features + tracked + stored

    def describe(self) -> dict[str, Any]:
        features, tracked = self.tracker.state_bytes(self.state)
        return {
            "model_id": self.tracker.model_id,
            "num_frames": self.info.num_frames,
            "objects": len(self.state["obj_ids"]),
            "feature_bytes": features,
            "memory_bytes": tracked,
            "frames_on_disk_bytes": self.frames.nbytes_on_disk,
            "idle_s": round(time.monotonic() - self.last_used, 1),
        }

    def close(self) -> None:
        self.state["cached_features"].clear()
        self.workdir.cleanup()


class SessionStore:
    def __init__(
        self, max_sessions: int, ttl_s: float, memory_bytes: int, max_per_key: int = 0
    ) -> None:
        """max_per_key: sessions one namespace may hold (open or being created; 0 = no cap
        of its own)."""
        self.max_sessions = max_sessions
        self.max_per_key = max_per_key
        self.ttl_s = ttl_s
        self.memory_bytes = memory_bytes
        self._sessions: dict[str, Session] = {}
        self._pending: dict[str, int] = {}  # namespace -> sessions being created
        self._expired: OrderedDict[str, None] = OrderedDict()  # recent ids, for a clear 404

    def __len__(self) -> int:
        return len(self._sessions)

    def held_by(self, namespace: str) -> int:
        """Sessions `namespace` has open or being created."""
        mine = sum(1 for s in self._sessions.values() if s.namespace == namespace)
        return mine + self._pending.get(namespace, 0)

    def sweep(self) -> None:
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if not s.lock.locked() and now - s.last_used > self.ttl_s:
                self._close(sid, expired=True)

    def admit(self, namespace: str) -> None:
        """Raise 429 + Retry-After when `namespace` holds its share of sessions, 503 +
        Retry-After when a new session would exceed the count or memory cap."""
        self.sweep()
        mine = self.held_by(namespace)
        if self.max_per_key > 0 and mine >= self.max_per_key:
            own = [s.last_used for s in self._sessions.values() if s.namespace == namespace]
            raise TooManyRequests(
                f"this API key has {mine} video sessions open or opening, its share is "
                f"{self.max_per_key} (SAM2SERVE_VIDEO_MAX_SESSIONS_PER_KEY): DELETE finished "
                "sessions or retry later",
                retry_after=self._wait(own),
            )
        opened = len(self._sessions) + sum(self._pending.values())
        if opened >= self.max_sessions:
            raise Unavailable(
                f"{opened} video sessions are open or opening, the cap is {self.max_sessions} "
                "(SAM2SERVE_VIDEO_MAX_SESSIONS): DELETE finished sessions or retry later",
                retry_after=self._wait([s.last_used for s in self._sessions.values()]),
            )
        if self.bytes_used >= self.memory_bytes:
            raise Unavailable(
                f"video sessions use {self.bytes_used} bytes, the budget is {self.memory_bytes} "
                "(SAM2SERVE_VIDEO_MEMORY_BYTES): DELETE finished sessions or retry later",
                retry_after=30.0,
            )

    def _wait(self, last_used: list[float]) -> float:
        """Seconds until the least recently used of these sessions expires (at least 1)."""
        oldest = min(last_used, default=time.monotonic())
        return max(1.0, self.ttl_s - (time.monotonic() - oldest))

    @contextmanager
    def reserve(self, namespace: str) -> Iterator[None]:
        """Admit a new session for `namespace` (or raise, see `admit`) and count it while it
        is created, so concurrent creations cannot overshoot the caps; `add` it inside."""
        self.admit(namespace)
        self._pending[namespace] = self._pending.get(namespace, 0) + 1
        try:
            yield
        finally:
            left = self._pending[namespace] - 1
            if left:
                self._pending[namespace] = left
            else:
                del self._pending[namespace]

    def add(self, session: Session) -> None:
        self._sessions[session.session_id] = session

    @staticmethod
    def new_id() -> str:
        return "vs_" + secrets.token_urlsafe(12)

    def get(self, namespace: str, session_id: str) -> Session:
        self.sweep()
        s = self._sessions.get(session_id)
        if s is None or not secrets.compare_digest(s.namespace, namespace):
            why = "expired after being idle" if session_id in self._expired else "does not exist"
            raise NotInCache(
                f"video session {session_id!r} {why} (idle TTL {self.ttl_s:g} s): create a new "
                "one with POST /sam2/video/sessions",
                field="session_id",
            )
        s.last_used = time.monotonic()
        return s

    def delete(self, namespace: str, session_id: str) -> None:
        s = self.get(namespace, session_id)
        if s.lock.locked():
            raise Conflict(
                f"video session {session_id!r} is busy (a propagation is running); stop it "
                "(close the stream) first",
                field="session_id",
            )
        self._close(session_id, expired=False)

    def _close(self, session_id: str, *, expired: bool) -> None:
        s = self._sessions.pop(session_id, None)
        if s is not None:
            s.close()
        if expired:
            self._expired[session_id] = None
            while len(self._expired) > 1024:
                self._expired.popitem(last=False)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self._close(sid, expired=False)

    @property
    def bytes_used(self) -> int:
        return sum(s.nbytes for s in self._sessions.values())

    def describe(self) -> dict[str, Any]:
        return {
            "open": len(self._sessions),
            "max_sessions": self.max_sessions,
            "max_sessions_per_key": self.max_per_key,
            "ttl_s": self.ttl_s,
            "bytes": self.bytes_used,
            "max_bytes": self.memory_bytes,
            "sessions": {sid[:8] + "...": s.describe() for sid, s in self._sessions.items()},
        }
