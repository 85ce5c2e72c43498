"""Lanes: bounded waiting, immediate 503 + Retry-After when full, and independence."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sam2serve.errors import Unavailable
from sam2serve.scheduling.lanes import Lane


def test_full_lane_answers_503_at_once_and_recovers() -> None:
    release = threading.Event()
    lane = Lane("embed", workers=1, max_waiting=2, retry_after_s=3.0)

    async def scenario() -> None:
        jobs = [asyncio.create_task(lane.run(release.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.05)  # 1 running + 2 waiting
        with pytest.raises(Unavailable) as err:
            await lane.run(lambda: None)
        assert err.value.retry_after == 3.0 and "retry" in err.value.message
        release.set()
        await asyncio.gather(*jobs)
        assert await lane.run(lambda: 42) == 42
        assert lane.active == 0

    asyncio.run(scenario())
    lane.shutdown()


def test_click_lane_is_not_blocked_by_busy_embed_lane() -> None:
    release = threading.Event()
    embed = Lane("embed", workers=1, max_waiting=4, retry_after_s=1)
    click = Lane("click", workers=1, max_waiting=4, retry_after_s=1)

    async def scenario() -> None:
        busy = [asyncio.create_task(embed.run(release.wait, 5)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(click.run(lambda: "clicked"), timeout=1) == "clicked"
        release.set()
        await asyncio.gather(*busy)

    asyncio.run(scenario())
    embed.shutdown()
    click.shutdown()
