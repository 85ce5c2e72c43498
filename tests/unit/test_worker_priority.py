"""The long lanes' workers (embed, video): a lower CPU priority and their own torch thread
count, both for that thread only (the click lane and the rest of the process keep theirs)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sam2serve.config import Settings
from sam2serve.image.service import ImageService
from sam2serve.scheduling.lanes import Lane
from sam2serve.scheduling.priority import lower_thread_priority, worker_init
from sam2serve.store.store import FeatureStore
from sam2serve.video.config import VideoSettings
from sam2serve.video.service import VideoService

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def in_thread(fn: Callable[[], Any]) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def in_lane(lane: Lane, fn: Callable[[], Any]) -> Any:
    try:
        return asyncio.run(lane.run(fn))
    finally:
        lane.shutdown()


@linux_only
def test_lower_priority_is_per_thread_and_inherited_by_threads_it_starts() -> None:
    base = nice_of_this_thread()

    def lowered() -> tuple[int, int]:
        lower_thread_priority(5)
        # the OpenMP workers a propagation starts are created by this thread later on
        return nice_of_this_thread(), in_thread(nice_of_this_thread)

    assert in_thread(lowered) == (min(19, base + 5),) * 2
    assert nice_of_this_thread() == base
    assert in_thread(nice_of_this_thread) == base


@linux_only
@pytest.mark.parametrize(("nice", "threads"), [(10, 1), (0, 1), (3, 0)])
def test_lane_initializer_sets_its_worker_only(nice: int, threads: int) -> None:
    base_nice, base_threads = nice_of_this_thread(), torch.get_num_threads()
    lane = Lane("video", 1, 1, retry_after_s=1.0, initializer=worker_init(nice, threads))
    seen = in_lane(lane, lambda: (nice_of_this_thread(), torch.get_num_threads()))
    assert seen == (min(19, base_nice + nice), threads or base_threads)
    # the rest of the process, new threads included, keeps its priority and thread count
    assert (nice_of_this_thread(), torch.get_num_threads()) == (base_nice, base_threads)
    assert in_thread(lambda: (nice_of_this_thread(), torch.get_num_threads())) == (
        base_nice,
        base_threads,
    )


@linux_only
def test_video_service_lane_runs_below_the_click_priority(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SAM2SERVE_VIDEO_NICE", "7")
    monkeypatch.setenv("SAM2SERVE_VIDEO_THREADS", "1")
    settings = VideoSettings()
    assert (settings.nice, settings.threads) == (7, 1)
    images = SimpleNamespace(settings=SimpleNamespace(api_keys=[]))  # only its lane is used
    service = VideoService(images=images, settings=settings)  # type: ignore[arg-type]
    base = nice_of_this_thread()
    try:
        seen = asyncio.run(
            service.lane.run(lambda: (nice_of_this_thread(), torch.get_num_threads()))
        )
    finally:
        service.close()
    assert seen == (min(19, base + 7), 1)


@pytest.mark.parametrize("env", [{"SAM2SERVE_VIDEO_NICE": "20"}, {"SAM2SERVE_VIDEO_THREADS": "-1"}])
def test_out_of_range_settings_are_refused(monkeypatch, env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(
        ValidationError, match=next(iter(env)).removeprefix("SAM2SERVE_VIDEO_").lower()
    ):
        VideoSettings()


@linux_only
@pytest.mark.parametrize("nice", [0, 6])
def test_embeds_run_below_the_click_priority(tmp_path, nice: int) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(weights_dir=tmp_path, allow_download=False, embed_nice=nice)
    store = FeatureStore.from_settings(settings)
    service = ImageService(settings, {}, pool=None, store=store)  # type: ignore[arg-type]
    base = nice_of_this_thread()

    async def lanes() -> tuple[int, int, int]:
        try:
            embed = await service.embed_lane.run(nice_of_this_thread)
            decode = await service.decode_lane.run(nice_of_this_thread)
            click = await service.click_lane.run(nice_of_this_thread)
        finally:
            await service.aclose()
        return embed, decode, click

    assert asyncio.run(lanes()) == (min(19, base + nice), min(19, base + nice), base)


def test_request_images_decode_on_the_decode_lane(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A request's image is decoded by the service's decode lane (below the clicks)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from sam2serve.image.schema import ImageInput
    from sam2serve.media import decode as image_decode

    threads: list[str] = []
    real = image_decode.decode_base64

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(image_decode, "decode_base64", spy)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    image = ImageInput(type="base64", value=base64.b64encode(buf.getvalue()).decode())
    settings = Settings(weights_dir=tmp_path, allow_download=False)
    store = FeatureStore.from_settings(settings)
    service = ImageService(settings, {}, pool=None, store=store)  # type: ignore[arg-type]

    async def load():  # type: ignore[no-untyped-def]
        try:
            return await service.load(image)
        finally:
            await service.aclose()

    assert asyncio.run(load()).rgb.shape == (8, 8, 3)
    assert len(threads) == 1 and threads[0].startswith("sam2-decode")
