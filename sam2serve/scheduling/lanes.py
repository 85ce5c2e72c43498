"""Two work lanes so a click never waits behind another image's embed.

Each lane is a small thread pool with a bounded number of waiting jobs: over capacity,
`run` fails at once with 503 + Retry-After instead of queueing forever. A job whose caller
is cancelled while it waits is dropped; one already running finishes and returns.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sam2serve.errors import Unavailable

T = TypeVar("T")


class Lane:
    def __init__(
        self,
        name: str,
        workers: int,
        max_waiting: int,
        retry_after_s: float,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        """initializer: run in each worker thread when it starts (e.g. its CPU priority)."""
        self.name = name
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self._workers = workers
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"sam2-{name}", initializer=initializer
        )
        self.active = 0  # submitted and not yet finished (running + waiting)
        self.refused = 0  # jobs answered 503 because the lane was full
        self.dropped = 0  # jobs cancelled before they started (their client went away)

    @property
    def capacity(self) -> int:
        """Jobs the lane holds at once: running plus waiting."""
        return self._workers + self.max_waiting

    @property
    def waiting(self) -> int:
        return max(0, self.active - self._workers)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.waiting >= self.max_waiting:
            self.refused += 1
            raise Unavailable(
                f"server busy: {self.waiting} {self.name} jobs already waiting; retry shortly",
                retry_after=self.retry_after_s,
            )
        self.active += 1
        try:
            ctx = contextvars.copy_context()
            job = self._pool.submit(ctx.run, fn, *args)
            try:
                return await asyncio.shield(asyncio.wrap_future(job))
            except asyncio.CancelledError:
                if job.cancel():  # still waiting: dropped, never runs
                    self.dropped += 1
                    raise
                # already running: let it finish so its result is not wasted (it may be
                # cached for the next caller); the cancellation is taken back
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
                    task.uncancel()
                return await asyncio.wrap_future(job)
        finally:
            self.active -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
