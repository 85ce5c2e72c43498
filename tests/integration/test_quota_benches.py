"""The quota and refusal benchmarks, run on the 256 px test architecture against a real
server process: a refused 6000 x 6000 x 16-prompt request costs a fresh server under
100 MiB of peak memory, and while one key floods embeds and opens sessions the other key's
embeds and session are served (no timing asserted: the figures are in docs/reliability.md)."""

from __future__ import annotations

import pytest

from bench import fairness, refusal_memory
from sam2serve.testing import TEST_MODEL_ID

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_a_refused_request_costs_a_fresh_server_almost_nothing() -> None:
    result = refusal_memory.run(TEST_MODEL_ID, size=6000, prompts=16, control=False)
    segment, everything = result["requests"]  # type: ignore[misc]
    assert segment["status"] == 413 and "SAM2SERVE_MAX_MASK_PIXELS" in segment["message"]
    assert everything["status"] == 413 and "grid points" in everything["message"]
    assert segment["peak_growth_mib"] < 100, result
    assert everything["peak_growth_mib"] < 100, result


@pytest.mark.timeout(900)
def test_one_keys_flood_leaves_the_other_key_served() -> None:
    result = fairness.run(TEST_MODEL_ID, n=4, idle=2, flood=6, sessions=3)
    assert result["b_status"] == {200: 4}, result  # never refused, never 503
    assert result["a_status"].get(429, 0) > 0, result  # A is held to its share
    assert result["a_status"].get(503, 0) == 0, result  # ... before the lane is full
    assert result["a_sessions"] == [200, 200, 429], result  # 2 per key
    assert result["b_session"] == 200, result
