"""Fair sharing between API keys over HTTP: a key's flood of embeds holds at most its share
of the image slots (429 naming SAM2SERVE_EMBED_QUEUE_PER_KEY beyond), and another key's
embed runs right after the embed in progress, not behind the flood."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from sam2serve.runtime.torch_runtime import TorchRuntime
from tests.conftest import encode_image, tiny_settings
from tests.helpers_server import threaded_server


def _image(height: int) -> dict[str, str]:
    """A distinct image per height (its embed is recognised by its height)."""
    rgb = np.random.default_rng(height).integers(0, 255, (height, 96, 3), dtype=np.uint8)
    return {"type": "base64", "value": encode_image(rgb)}


def test_another_keys_embed_waits_only_for_the_one_in_progress(
    tiny_weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    order: list[int] = []
    original = TorchRuntime.embed

    def gated(self: TorchRuntime, rgb: np.ndarray):  # type: ignore[no-untyped-def]
        order.append(int(rgb.shape[0]))
        if len(order) == 1:
            gate.wait(30)  # the first embed holds the lane until everyone has queued
        return original(self, rgb)

    monkeypatch.setattr(TorchRuntime, "embed", gated)
    settings = tiny_settings(tiny_weights_dir, api_keys=["alpha", "beta"], embed_queue_per_key=3)

    async def scenario(url: str) -> dict[str, object]:
        a = {"authorization": "Bearer alpha"}
        b = {"authorization": "Bearer beta"}
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            def embed(height: int, headers: dict[str, str]):  # type: ignore[no-untyped-def]
                body = {"image": _image(height)}
                return asyncio.ensure_future(
                    http.post("/sam2/embed_image", json=body, headers=headers)
                )

            # warm the model up (loaded on the first request), then empty the record
            gate.set()
            assert (await embed(40, a)).status_code == 200
            order.clear()
            gate.clear()
            flood = [embed(41, a)]
            await _until(lambda: order == [41])
            flood += [embed(42, a), embed(43, a)]  # A: 1 running + 2 waiting = its share
            await asyncio.sleep(0.5)
            over = await embed(44, a)  # a 4th image of A's: over its share
            mine = embed(50, b)
            await asyncio.sleep(0.5)
            gate.set()
            answers = await asyncio.gather(*flood, mine)
            return {"over": over, "answers": answers, "order": list(order)}

    with threaded_server(settings) as url:
        result = asyncio.run(scenario(url))
    over = result["over"]
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
    assert "SAM2SERVE_EMBED_QUEUE_PER_KEY" in over.json()["message"]  # type: ignore[attr-defined]
    assert [r.status_code for r in result["answers"]] == [200] * 4  # type: ignore[attr-defined]
    order = result["order"]
    assert order[:2] == [41, 50]  # B right after the embed in progress
    assert sorted(order[2:]) == [42, 43]  # A's two waiting ones (decoded in parallel: any order)


async def _until(condition, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
