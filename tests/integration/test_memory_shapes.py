"""Memory is bounded by configuration, not by traffic: after 120 distinct prompt shapes
(1-3 prompts x 1-40 points) the fast runtime's resident memory has grown by at most
150 MiB, and a second pass over the same shapes adds (almost) nothing. Run in a fresh
process (bench/memory_shapes.py) so other tests' allocations do not blur the reading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sam2serve.testing import TEST_MODEL_ID

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(weights: Path, cache: Path, *extra: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.memory_shapes",
            "--model",
            TEST_MODEL_ID,
            "--weights-dir",
            str(weights),
            "--cache-dir",
            str(cache),
            *extra,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(1800)  # graph export + 240 decodes; a few minutes on an idle 2-core box
def test_rss_bounded_over_120_prompt_shapes(
    tiny_weights_dir: Path, runtime_cache_dir: Path
) -> None:
    result = _run(tiny_weights_dir, runtime_cache_dir, "--prompts", "3", "--points", "40")
    growth = result["growth_mib_after_each_prompt_count"]
    assert result["shapes"] == 120
    assert growth[-1] <= 150, result
    assert result["growth_mib_after_second_pass"] - growth[-1] <= 16, result  # flat after
