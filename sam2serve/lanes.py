"""Two work lanes so a click never waits behind another image's embed.

Each lane is a small thread pool with a bounded number of waiting jobs: over capacity,
`submit` fails at once with 503 + Retry-After instead of queueing forever.
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
    def __init__(self, name: str, workers: int, max_waiting: int, retry_after_s: float) -> None:
        self.name = name
        self.max_waiting = max_waiting
        self.retry_after_s = retry_after_s
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"sam2-{name}")
        self.active = 0  # submitted and not yet finished (running + waiting)

    @property
    def waiting(self) -> int:
        return max(0, self.active - self._workers)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.waiting >= self.max_waiting:
            raise Unavailable(
                f"server busy: {self.waiting} {self.name} jobs already waiting; retry shortly",
                retry_after=self.retry_after_s,
            )
        self.active += 1
        try:
            ctx = contextvars.copy_context()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, ctx.run, fn, *args)
        finally:
            self.active -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
