"""Work lanes (embed, click, decode, video) so a click never waits behind another image's
embed, and one API key's flood never waits in front of another key's job.

Each lane is a small thread pool with a bounded number of waiting jobs: over capacity,
`run` fails at once with 503 + Retry-After instead of queueing forever. Jobs carry a
`tenant` (the API-key namespace); waiting jobs are queued per tenant and a free worker takes
the next job of the tenant served least recently (round-robin; a tenant new to the lane goes
first), so a key's job waits behind at most the jobs already running, however many another
key has queued. A lane may also cap the jobs one tenant has waiting (`max_waiting_per_tenant`,
429 + Retry-After naming the setting). A job whose caller is cancelled while it waits is
dropped; one already running finishes and returns.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sam2serve.errors import TooManyRequests, Unavailable

T = TypeVar("T")


class Lane:
    def __init__(
        self,
        name: str,
        workers: int,
        max_waiting: int,
        retry_after_s: float,
        initializer: Callable[[], None] | None = None,
        *,
        max_waiting_per_tenant: int = 0,
        tenant_setting: str = "",
    ) -> None:
        """initializer: run in each worker thread when it starts (e.g. its CPU priority).
        max_waiting_per_tenant: jobs one tenant may have waiting (0 = no cap of its own);
        tenant_setting names the setting in the 429's message."""
        self.name = name
        self.max_waiting = max_waiting
        self.max_waiting_per_tenant = max_waiting_per_tenant
        self.tenant_setting = tenant_setting
        self.retry_after_s = retry_after_s
        self._workers = workers
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"sam2-{name}", initializer=initializer
        )
        self.active = 0  # submitted and not yet finished (running + waiting)
        self.refused = 0  # jobs answered 503/429 because the lane (or the tenant's share) was full
        self.dropped = 0  # jobs cancelled before they started (their client went away)
        self._running = 0  # jobs holding a worker
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}  # waiting turns per tenant
        self._served: dict[str, int] = {}  # tenant -> tick of its last job start
        self._tick = 0

    @property
    def capacity(self) -> int:
        """Jobs the lane holds at once: running plus waiting."""
        return self._workers + self.max_waiting

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def waiting_for(self, tenant: str) -> int:
        """Jobs of `tenant` waiting for a worker."""
        return len(self._queues.get(tenant, ()))

    async def run(self, fn: Callable[..., T], *args: object, tenant: str = "") -> T:
        """Run `fn(*args)` on a worker of this lane, queued under `tenant` (an API-key
        namespace; "" = untracked, never capped per tenant)."""
        self._admit(tenant)
        self.active += 1
        try:
            await self._turn(tenant)
            try:
                ctx = contextvars.copy_context()
                job = self._pool.submit(ctx.run, fn, *args)
                try:
                    return await asyncio.shield(asyncio.wrap_future(job))
                except asyncio.CancelledError:
                    if job.cancel():  # not picked up by the worker yet: never runs
                        self.dropped += 1
                        raise
                    # already running: let it finish so its result is not wasted (it may be
                    # cached for the next caller); the cancellation is taken back
                    task = asyncio.current_task()
                    if task is not None and hasattr(task, "uncancel"):  # Python >= 3.11
                        task.uncancel()
                    return await asyncio.wrap_future(job)
            finally:
                self._release()
        finally:
            self.active -= 1

    def _admit(self, tenant: str) -> None:
        """503 when the lane's queue is full, 429 when this tenant's share of it is."""
        if self._running < self._workers and not self._queues:
            return  # starts at once
        if self.waiting >= self.max_waiting:
            self.refused += 1
            raise Unavailable(
                f"server busy: {self.waiting} {self.name} jobs already waiting; retry shortly",
                retry_after=self.retry_after_s,
            )
        cap = self.max_waiting_per_tenant
        if tenant and cap > 0 and self.waiting_for(tenant) >= cap:
            self.refused += 1
            raise TooManyRequests(
                f"this API key already has {self.waiting_for(tenant)} {self.name} jobs waiting, "
                f"its share of the {self.name} queue ({cap}, {self.tenant_setting}); other keys "
                "are still served: wait for your earlier requests, then retry",
                retry_after=self.retry_after_s,
            )

    async def _turn(self, tenant: str) -> None:
        """Return once this job holds a worker (at once when one is free and nobody waits)."""
        if self._running < self._workers and not self._queues:
            self._start(tenant)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(tenant, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as the caller left: pass it on
                self._release()
            else:
                queue = self._queues.get(tenant)
                if queue is not None and turn in queue:
                    queue.remove(turn)
                    if not queue:
                        del self._queues[tenant]
                self.dropped += 1
            raise

    def _start(self, tenant: str) -> None:
        self._running += 1
        self._tick += 1
        self._served[tenant] = self._tick

    def _release(self) -> None:
        """A worker is free: hand it to the waiting tenant served least recently."""
        self._running -= 1
        while self._running < self._workers and self._queues:
            tenant = min(self._queues, key=lambda t: self._served.get(t, 0))
            queue = self._queues[tenant]
            turn = queue.popleft()
            if not queue:
                del self._queues[tenant]
            if turn.done():  # its caller has gone
                continue
            self._start(tenant)
            turn.set_result(None)

    def shutdown(self) -> None:
        for queue in self._queues.values():
            for turn in queue:
                turn.cancel()
        self._queues.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
