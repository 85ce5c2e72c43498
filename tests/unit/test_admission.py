"""Image admission: global slots (503) and each key's share of them (429), charged before
the body is read when the key is in the query string or a header, else once it is parsed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sam2serve.api.admission import AdmissionTicket, ImageAdmission
from sam2serve.errors import TooManyRequests, Unavailable


class FakeRequest:
    """What admission reads of a request: its headers and its body stream."""

    def __init__(self, body: bytes = b"x" * 1000) -> None:
        self.headers = {"content-length": str(len(body))}
        self.body = body
        self.read = 0

    async def stream(self) -> AsyncIterator[bytes]:
        self.read += len(self.body)
        yield self.body


def _ticket(admission: ImageAdmission, request: FakeRequest | None = None) -> AdmissionTicket:
    return admission.ticket(request or FakeRequest(), 1 << 20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("per_key", "held_by_a", "status"),
    [
        (2, 1, None),  # within A's share
        (2, 2, 429),  # A holds its share: 429, B still fits
        (0, 4, None),  # no per-key cap (no API keys): only the global slots count
    ],
)
def test_a_key_over_its_share_gets_429_before_the_body_is_read(
    per_key: int, held_by_a: int, status: int | None
) -> None:
    admission = ImageAdmission(slots=6, retry_after_s=2.0, per_key=per_key)

    async def scenario() -> None:
        held = [_ticket(admission) for _ in range(held_by_a)]
        for ticket in held:
            await ticket.take(body_read=True, namespace="A")
        request = FakeRequest()
        ticket = _ticket(admission, request)
        if status is None:
            await ticket.take(body_read=False, namespace="A")
            assert ticket.held and request.read == 0
        else:
            with pytest.raises(TooManyRequests) as err:
                await ticket.take(body_read=False, namespace="A")
            assert err.value.status == 429 and err.value.retry_after == 2.0
            assert "SAM2SERVE_EMBED_QUEUE_PER_KEY" in err.value.message
            assert not ticket.held and request.read == len(request.body)  # discarded, unparsed
        other = _ticket(admission)
        await other.take(body_read=True, namespace="B")  # another key is still served
        for t in [*held, ticket, other]:
            await t.__aexit__(None, None, None)
        assert admission.in_use == 0 and admission.held_by == {}

    asyncio.run(scenario())


def test_a_key_found_in_the_body_is_charged_after_parsing() -> None:
    admission = ImageAdmission(slots=4, retry_after_s=1.0, per_key=1)

    async def scenario() -> None:
        first = _ticket(admission)
        await first.take(body_read=False)  # key unknown yet (in the body)
        first.charge("A")  # parsed: A's
        second = _ticket(admission)
        await second.take(body_read=False)
        with pytest.raises(TooManyRequests):
            second.charge("A")  # over A's share: 429, its slot let go
        assert not second.held and admission.in_use == 1
        await first.__aexit__(None, None, None)
        assert admission.in_use == 0 and admission.held_by == {}

    asyncio.run(scenario())


def test_a_key_in_the_body_overrides_the_one_in_the_header() -> None:
    admission = ImageAdmission(slots=4, retry_after_s=1.0, per_key=2)

    async def scenario() -> None:
        ticket = _ticket(admission)
        await ticket.take(body_read=False, namespace="A")  # from the header
        ticket.charge("B")  # the body's key wins (as in auth)
        assert admission.held_by == {"B": 1}
        await ticket.__aexit__(None, None, None)
        assert admission.held_by == {}

    asyncio.run(scenario())


def test_global_slots_still_answer_503() -> None:
    admission = ImageAdmission(slots=1, retry_after_s=1.0, per_key=1)

    async def scenario() -> None:
        await _ticket(admission).take(body_read=True, namespace="A")
        with pytest.raises(Unavailable) as err:
            await _ticket(admission).take(body_read=True, namespace="B")
        assert err.value.status == 503

    asyncio.run(scenario())
