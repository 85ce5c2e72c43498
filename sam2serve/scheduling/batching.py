"""Micro-batching of embeds: concurrent embeds of one model, gathered for a few
milliseconds, run as one batched encoder call (on a GPU, a batch of 4 costs far less than
4 single calls). Every image is resized to the model's square input, so any images batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sam2serve.errors import Unavailable
from sam2serve.scheduling.lanes import Lane

X = TypeVar("X")
Y = TypeVar("Y")


class MicroBatcher(Generic[X, Y]):
    """Collects items for up to `window_s` (or until `max_batch` are waiting), then runs
    `batch_fn(items) -> results` once on `lane`; each caller gets its own result.

    At most `max_pending` items may wait; beyond that `submit` answers 503 at once.
    Runs on the event loop thread (no locks needed).
    """

    def __init__(
        self,
        batch_fn: Callable[[list[X]], list[Y]],
        lane: Lane,
        *,
        max_batch: int,
        window_s: float,
        max_pending: int,
    ) -> None:
        self.batch_fn = batch_fn
        self.lane = lane
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_pending = max_pending
        self._pending: list[tuple[X, asyncio.Future[Y]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches: list[int] = []  # sizes of the batches run so far (for tests and /info)

    async def submit(self, item: X) -> Y:
        if len(self._pending) >= self.max_pending:
            raise Unavailable(
                f"server busy: {len(self._pending)} images already waiting to be embedded; "
                "retry shortly",
                retry_after=self.lane.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Y] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[X, asyncio.Future[Y]]]) -> None:
        self.batches.append(len(batch))
        try:
            results = await self.lane.run(self.batch_fn, [item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


class Embedders:
    """How each loaded model embeds: through its micro-batcher where batching is on and the
    runtime has `embed_batch` (default on CUDA), else one image per job on `lane`."""

    def __init__(self, lane: Lane, *, batch_size: int, window_s: float, queue: int) -> None:
        self.lane = lane
        self.batch_size = batch_size  # 0: 4 on CUDA, 1 (off) elsewhere
        self.window_s = window_s
        self.queue = queue
        self._batchers: dict[str, MicroBatcher[Any, Any]] = {}

    def batcher(self, model_id: str) -> MicroBatcher[Any, Any] | None:
        return self._batchers.get(model_id)

    def for_model(
        self, model_id: str, runtime: Any, tenant: str = ""
    ) -> Callable[[Any], Awaitable[Any]]:
        """`embed(pixels) -> features` for this model's runtime (`embed`, maybe `embed_batch`),
        queued in the lane under `tenant` (an API-key namespace; a micro-batch mixes
        tenants and is queued untracked)."""
        size = self.batch_size or (4 if runtime.device.type == "cuda" else 1)
        embed_batch = getattr(runtime, "embed_batch", None)
        if size <= 1 or embed_batch is None:
            return lambda rgb: self.lane.run(runtime.embed, rgb, tenant=tenant)
        batcher = self._batchers.get(model_id)
        if batcher is None or batcher.batch_fn != embed_batch:  # model reloaded
            batcher = MicroBatcher(
                embed_batch,
                self.lane,
                max_batch=size,
                window_s=self.window_s,
                max_pending=size * max(1, self.queue),
            )
            self._batchers[model_id] = batcher
        return batcher.submit
