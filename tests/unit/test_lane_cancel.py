"""Lanes and cancellation: a waiting job whose caller is cancelled never runs; a running
one finishes and returns its result."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sam2serve.scheduling.lanes import Lane


def test_cancelled_waiting_job_is_dropped_and_running_one_finishes() -> None:
    lane = Lane("embed", workers=1, max_waiting=4, retry_after_s=1.0)
    release = threading.Event()
    ran: list[str] = []

    def job(name: str) -> str:
        ran.append(name)
        release.wait(5)
        return name

    async def scenario() -> None:
        running = asyncio.create_task(lane.run(job, "running"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(lane.run(job, "waiting"))
        await asyncio.sleep(0.05)
        waiting.cancel()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        assert await running == "running"  # it had started: its result is kept
        assert lane.active == 0

    asyncio.run(scenario())
    lane.shutdown()
    assert ran == ["running"]
    assert lane.dropped == 1 and lane.refused == 0


def test_capacity_counts_workers_and_waiting() -> None:
    lane = Lane("embed", workers=1, max_waiting=3, retry_after_s=1.0)
    assert lane.capacity == 4
    lane.shutdown()
