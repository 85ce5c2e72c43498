"""Lanes: bounded waiting, immediate 503 + Retry-After when full, and independence."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sam2serve.errors import TooManyRequests, Unavailable
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


def _ordered_lane(**kwargs: object) -> tuple[Lane, list[str], threading.Event]:
    """A one-worker lane whose jobs record their name and block on a shared gate."""
    lane = Lane("embed", workers=1, max_waiting=8, retry_after_s=2.0, **kwargs)  # type: ignore[arg-type]
    return lane, [], threading.Event()


@pytest.mark.parametrize(
    ("arrivals", "order"),
    [
        # A floods first; B's one job runs right after the job in progress
        ([("A", 4), ("B", 1)], ["A0", "B0", "A1", "A2", "A3"]),
        # three keys: round-robin, a newcomer first
        ([("A", 3), ("B", 2), ("C", 1)], ["A0", "B0", "C0", "A1", "B1", "A2"]),
        # one key alone: first come, first served
        ([("A", 3)], ["A0", "A1", "A2"]),
        # untracked jobs ("") take their turn like a tenant
        ([("A", 2), ("", 1)], ["A0", "0", "A1"]),
    ],
)
def test_waiting_jobs_are_served_round_robin_between_tenants(
    arrivals: list[tuple[str, int]], order: list[str]
) -> None:
    lane, ran, gate = _ordered_lane()

    def job(name: str) -> None:
        ran.append(name)
        gate.wait(5)

    async def scenario() -> None:
        jobs = []
        for tenant, count in arrivals:
            for i in range(count):
                name = f"{tenant}{i}"
                jobs.append(asyncio.create_task(lane.run(job, name, tenant=tenant)))
                await asyncio.sleep(0.02)  # arrival order; the first one starts at once
        gate.set()
        await asyncio.gather(*jobs)
        assert lane.active == 0 and lane.waiting == 0

    asyncio.run(scenario())
    lane.shutdown()
    assert ran == order


def test_a_tenant_over_its_share_gets_429_naming_the_setting_others_still_queue() -> None:
    lane, _, gate = _ordered_lane(max_waiting_per_tenant=2, tenant_setting="SAM2SERVE_X")

    async def scenario() -> None:
        jobs = [asyncio.create_task(lane.run(gate.wait, 5, tenant="A")) for _ in range(3)]
        await asyncio.sleep(0.05)  # A: 1 running + 2 waiting (its share)
        with pytest.raises(TooManyRequests) as err:
            await lane.run(gate.wait, 5, tenant="A")
        assert err.value.status == 429 and err.value.retry_after == 2.0
        assert "SAM2SERVE_X" in err.value.message and "2" in err.value.message
        jobs.append(asyncio.create_task(lane.run(gate.wait, 5, tenant="B")))  # B is admitted
        jobs.append(asyncio.create_task(lane.run(gate.wait, 5)))  # untracked: no share
        await asyncio.sleep(0.05)
        assert (lane.waiting_for("A"), lane.waiting_for("B"), lane.waiting) == (2, 1, 4)
        gate.set()
        await asyncio.gather(*jobs)

    asyncio.run(scenario())
    lane.shutdown()
    assert lane.refused == 1


def test_a_cancelled_waiting_tenant_job_is_dropped_and_the_rest_keep_their_turns() -> None:
    lane, ran, gate = _ordered_lane()

    def job(name: str) -> None:
        ran.append(name)
        gate.wait(5)

    async def scenario() -> None:
        first = asyncio.create_task(lane.run(job, "A0", tenant="A"))
        await asyncio.sleep(0.02)
        b = asyncio.create_task(lane.run(job, "B0", tenant="B"))
        a1 = asyncio.create_task(lane.run(job, "A1", tenant="A"))
        await asyncio.sleep(0.02)
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        gate.set()
        await asyncio.gather(first, a1)

    asyncio.run(scenario())
    lane.shutdown()
    assert ran == ["A0", "A1"] and lane.dropped == 1 and lane.active == 0
