"""`ImageService` on a fake runtime (tests/fake_runtime.py): formats, best-mask choice,
mask_input, the logits cache, NotInCache, image-id binding, model-pool eviction and lanes, in
milliseconds. The real runtimes are checked against Meta's predictor in tests/integration."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from PIL import Image

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, NotInCache, ServiceError, Unavailable
from sam2serve.image.decoding import token_groups
from sam2serve.image.prompts import to_batch
from sam2serve.image.schema import EmbedRequest, LocalEmbedRequest, SegmentRequest, SegmentResponse
from sam2serve.image.service import BinaryResult, ImageService
from sam2serve.media import postprocess
from sam2serve.media.decode import from_rgb
from sam2serve.registry import REGISTRY
from sam2serve.runtime.base import PromptBatch
from sam2serve.runtime.pool import ModelPool
from sam2serve.store.store import FeatureStore
from tests.fake_runtime import LOW_RES, FakeFactory, FakeRuntime, expected_decode

T = TypeVar("T")
MODEL = "sam2.1_hiera_tiny"
NS = "public"
RGB = (np.arange(24 * 32 * 3, dtype=np.uint32).reshape(24, 32, 3) * 7 % 251).astype(np.uint8)
OTHER = RGB[::-1].copy()
PROMPTS = [
    {"points": [{"x": 4, "y": 3}]},
    {"box": {"x": 20, "y": 12, "width": 10, "height": 8}, "points": [{"x": 22, "y": 14}]},
    {"points": [{"x": 30, "y": 20, "positive": False}]},
]


def png_b64(rgb: np.ndarray) -> dict[str, str]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return {"type": "base64", "value": base64.b64encode(buf.getvalue()).decode()}


class Harness:
    """A service over fake runtimes, run on its own event loop."""

    def __init__(self, weights_dir: Path, **overrides: Any) -> None:
        for spec in REGISTRY.values():  # the pool only needs the checkpoint files to exist
            (weights_dir / spec.filename).touch()
        values: dict[str, Any] = {
            "weights_dir": weights_dir,
            "default_model": MODEL,
            "allow_download": False,
            "device": "cpu",
            "runtime": "torch",
        }
        self.settings = Settings(**{**values, **overrides})
        self.factory = FakeFactory()
        pool = ModelPool(
            weights_dir,
            torch.device("cpu"),
            allow_download=False,
            max_models=self.settings.max_models,
            factory=self.factory,
        )
        self.loop = asyncio.new_event_loop()
        store = FeatureStore.from_settings(self.settings)
        self.service = ImageService(self.settings, REGISTRY, pool, store=store)

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        async def go() -> T:
            return await make()

        return self.loop.run_until_complete(go())

    def segment(self, pixels: np.ndarray | None = None, **body: Any) -> Any:
        loaded = None if pixels is None else from_rgb(pixels, max_pixels=1 << 30)
        if loaded is not None:  # as the Segmenter does: pixels are cached by content
            body.setdefault("image_id", loaded.content_hash)
        request = SegmentRequest.model_validate(body)
        return self.run(lambda: self.service.segment(request, NS, pixels=loaded))

    @property
    def runtime(self) -> FakeRuntime:
        return self.factory.runtimes[MODEL]

    def close(self) -> None:
        self.run(self.service.aclose)
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def decode_calls(
    harness: Harness, prompts: list, start: int = 0
) -> list[tuple[np.ndarray, PromptBatch, bool]]:
    """The runtime calls of one request (from call `start`): one per token count of its
    prompts, each as (the request rows it decoded, its batch, multimask)."""
    labels = to_batch(
        SegmentRequest.model_validate({"image_id": "x", "prompts": prompts}).prompt_list()
    ).labels
    groups = list(token_groups(labels).values())
    calls = harness.runtime.decoded[start : start + len(groups)]
    assert len(calls) == len(groups)
    return [(rows, batch, multi) for rows, (batch, multi) in zip(groups, calls, strict=True)]


def expected(rgb: np.ndarray, prompts: list, multimask: bool, mask_input: Any = None) -> tuple:
    """(full logits (N, H, W), low_res (N, m, m), scores (N,)) as the service must answer."""
    runtime = FakeRuntime()
    features = runtime.embed(rgb)
    batch = to_batch(
        SegmentRequest.model_validate({"image_id": "x", "prompts": prompts}).prompt_list()
    )
    if mask_input is not None:
        batch = type(batch)(batch.coords, batch.labels, mask_input, None)
    low, scores = expected_decode(features, batch, multimask)
    best = scores.argmax(dim=1)
    chosen = low[torch.arange(len(best)), best]
    full = runtime.upscale(chosen, features.orig_hw).numpy()
    return full, chosen.clamp(-32, 32).numpy(), scores.max(dim=1).values.numpy()


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("fmt", ["json", "rle", "binary"])
def test_formats_and_best_mask(harness: Harness, fmt: str, multimask: bool) -> None:
    got = harness.segment(
        image=png_b64(RGB), prompts=PROMPTS, format=fmt, multimask_output=multimask
    )
    full, low_res, scores = expected(RGB, PROMPTS, multimask)
    masks = full > 0
    assert masks.any() and not masks.all()  # the comparison below can tell masks apart
    if fmt == "binary":
        assert isinstance(got, BinaryResult)
        npz = np.load(io.BytesIO(got.content))
        np.testing.assert_array_equal(npz["masks"], full)
        np.testing.assert_array_equal(npz["low_res_masks"], low_res)
        return
    assert isinstance(got, SegmentResponse) and got.time > 0
    assert [p.confidence for p in got.predictions] == pytest.approx(scores.tolist())
    for pred, mask in zip(got.predictions, masks, strict=True):
        if fmt == "rle":
            assert pred.format == "rle"
            assert pred.masks.model_dump() == postprocess.mask_to_rle(mask)
        else:
            assert pred.format == "polygon"
            assert pred.masks == postprocess.mask_to_polygons(mask)
    calls = decode_calls(harness, PROMPTS)
    assert len(calls) == 2  # one call per token count: 1 token (two prompts), 3 tokens
    assert len(harness.runtime.decoded) == len(calls)
    assert all(multi is multimask for _, _, multi in calls)
    assert sorted(i for rows, _, _ in calls for i in rows) == list(range(len(PROMPTS)))


def test_best_mask_differs_between_prompts(harness: Harness) -> None:
    """The fake's scores put the best candidate at different indices, so the choice is
    really made per prompt."""
    harness.segment(image=png_b64(RGB), prompts=PROMPTS, format="binary")
    features = FakeRuntime().embed(RGB)
    best = [
        expected_decode(features, batch, True)[1].argmax(dim=1)
        for _, batch, _ in decode_calls(harness, PROMPTS)
    ]
    assert len(set(torch.cat(best).tolist())) > 1


def test_no_prompts_gives_one_prediction(harness: Harness) -> None:
    got = harness.segment(image=png_b64(RGB))
    assert len(got.predictions) == 1
    batch, _ = harness.runtime.decoded[0]
    assert batch.labels.tolist() == [[-1]]


@pytest.mark.parametrize(
    "shape", [(3, LOW_RES, LOW_RES), (3, 1, LOW_RES, LOW_RES), (LOW_RES, LOW_RES)]
)
def test_mask_input_reaches_the_runtime(harness: Harness, shape: tuple) -> None:
    raw = np.linspace(-3, 3, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    got = harness.segment(
        image=png_b64(RGB), prompts=PROMPTS, mask_input=raw.tolist(), format="binary"
    )
    per_prompt = raw.reshape(-1, LOW_RES, LOW_RES)
    per_prompt = np.repeat(per_prompt, 3 // len(per_prompt), axis=0)
    for rows, batch, _ in decode_calls(harness, PROMPTS):
        np.testing.assert_array_equal(batch.mask_input, per_prompt[rows, None])
    full, _, _ = expected(RGB, PROMPTS, True, per_prompt[:, None])
    np.testing.assert_array_equal(np.load(io.BytesIO(got.content))["masks"], full)


@pytest.mark.parametrize(
    "raw",
    [
        np.zeros((2, LOW_RES, LOW_RES)),
        np.zeros((3, 4, 4)),
        [[["a"]]],
        np.full((1, LOW_RES, LOW_RES), np.inf),
    ],
)
def test_bad_mask_input_is_a_400(harness: Harness, raw: Any) -> None:
    raw = raw.tolist() if isinstance(raw, np.ndarray) else raw
    with pytest.raises(BadRequest, match="mask_input") as info:
        harness.segment(image=png_b64(RGB), prompts=PROMPTS, mask_input=raw)
    assert info.value.field == "mask_input" and info.value.status == 400


def test_logits_cache_refines_a_grown_prompt(harness: Harness) -> None:
    first = [{"points": [{"x": 4, "y": 3}]}]
    grown = [{"points": [{"x": 4, "y": 3}, {"x": 9, "y": 9}]}, {"points": [{"x": 30, "y": 2}]}]
    saved = harness.segment(
        image=png_b64(RGB), prompts=first, save_logits_to_cache=True, format="binary"
    )
    low_res = np.load(io.BytesIO(saved.content))["low_res_masks"]
    harness.segment(image=png_b64(RGB), prompts=grown, load_logits_from_cache=True)
    calls = {int(rows[0]): batch for rows, batch, _ in decode_calls(harness, grown, 1)}
    assert calls[1].has_mask.tolist() == [False]  # the new prompt has no earlier logits
    assert calls[0].has_mask.tolist() == [True]
    np.testing.assert_array_equal(calls[0].mask_input[0, 0], low_res[0])
    # another image, or no load flag: nothing is loaded
    harness.segment(image=png_b64(OTHER), prompts=grown, load_logits_from_cache=True)
    harness.segment(image=png_b64(RGB), prompts=grown)
    assert all(batch.mask_input is None for batch, _ in harness.runtime.decoded[3:])
    assert len(harness.runtime.decoded) == 7


def test_image_ids_bind_to_cached_embeddings(harness: Harness) -> None:
    svc = harness.service
    default = harness.run(
        lambda: svc.embed(EmbedRequest.model_validate({"image": png_b64(RGB)}), NS)
    )
    assert default.image_id == from_rgb(RGB, max_pixels=1 << 30).content_hash
    named = harness.run(
        lambda: svc.embed(
            LocalEmbedRequest(image_id="cat"), NS, pixels=from_rgb(RGB, max_pixels=1 << 30)
        )
    )
    assert named.image_id == "cat"
    assert len(harness.runtime.embedded) == 1  # same pixels: embedded once, two ids
    by_id = harness.segment(image_id="cat", prompts=PROMPTS, format="rle")
    direct = harness.segment(RGB, image_id="direct", prompts=PROMPTS, format="rle")
    assert by_id.predictions == direct.predictions
    assert len(harness.runtime.embedded) == 1
    # an id given with other pixels moves to those pixels
    harness.segment(OTHER, image_id="cat", prompts=PROMPTS)
    assert harness.runtime.embedded == [(24, 32), (24, 32)]


def test_unknown_ids_and_other_namespaces_are_not_in_cache(harness: Harness) -> None:
    harness.segment(RGB, image_id="cat", prompts=PROMPTS)
    with pytest.raises(NotInCache, match="'never'") as info:
        harness.segment(image_id="never", prompts=PROMPTS)
    assert info.value.status == 404 and info.value.field == "image_id"
    request = SegmentRequest.model_validate({"image_id": "cat"})
    with pytest.raises(NotInCache):
        harness.run(lambda: harness.service.segment(request, "key:someone-else"))
    with pytest.raises(NotInCache):  # an id is bound per model too
        harness.segment(image_id="cat", sam2_version_id="sam2.1_hiera_small")


def test_unknown_model_is_a_400(harness: Harness) -> None:
    with pytest.raises(BadRequest, match="vit_h"):
        harness.segment(RGB, prompts=PROMPTS, sam2_version_id="vit_h")
    assert harness.factory.built == []


def test_pool_keeps_max_models_and_evicts_least_recent(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_models=2)
    try:
        for model in ("hiera_tiny", "hiera_small", "hiera_tiny", "hiera_b_plus", "hiera_small"):
            h.segment(RGB, prompts=PROMPTS, sam2_version_id=model)
        # tiny, small loaded; tiny used again; b+ evicts small (least recent); small reloads
        assert h.factory.built == [
            "sam2.1_hiera_tiny",
            "sam2.1_hiera_small",
            "sam2.1_hiera_base_plus",
            "sam2.1_hiera_small",
        ]
        assert h.service.pool.loaded == ["sam2.1_hiera_base_plus", "sam2.1_hiera_small"]
    finally:
        h.close()


def test_pool_loads_a_model_once_under_concurrency(harness: Harness) -> None:
    async def many() -> list:
        spec = harness.service.spec_for(None)
        return await asyncio.gather(*(harness.service.pool.get(spec) for _ in range(5)))

    runtimes = harness.run(many)
    assert len({id(r) for r in runtimes}) == 1 and harness.factory.built == [MODEL]


def test_missing_weights_are_a_503(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    (tmp_path / REGISTRY[MODEL].filename).unlink()
    try:
        with pytest.raises(Unavailable, match="not found"):
            h.segment(RGB, prompts=PROMPTS)
    finally:
        h.close()


def test_a_click_does_not_wait_behind_another_images_embed(harness: Harness) -> None:
    harness.segment(RGB, image_id="cached", prompts=PROMPTS)  # loads the model, embeds
    hold = threading.Event()
    harness.runtime.hold_embeds = hold

    async def race() -> SegmentResponse:
        slow = asyncio.create_task(
            harness.service.segment(SegmentRequest.model_validate({"image": png_b64(OTHER)}), NS)
        )
        await asyncio.sleep(0.05)
        assert harness.service.embed_lane.active == 1  # the other embed is running, held
        click = await harness.service.segment(
            SegmentRequest.model_validate({"image_id": "cached", "prompts": PROMPTS}), NS
        )
        assert not slow.done()
        hold.set()
        await slow
        return click

    assert len(harness.run(race).predictions) == len(PROMPTS)


def test_full_lanes_answer_503_with_retry_after(tmp_path: Path) -> None:
    h = Harness(tmp_path, embed_queue=1)
    try:
        h.segment(RGB, image_id="warm", prompts=PROMPTS)
        hold = threading.Event()
        h.runtime.hold_embeds = hold

        def request(value: int) -> SegmentRequest:
            return SegmentRequest.model_validate({"image": png_b64(np.full_like(RGB, value))})

        async def crowd() -> ServiceError:
            running = asyncio.create_task(h.service.segment(request(1), NS))
            queued = asyncio.create_task(h.service.segment(request(2), NS))
            await asyncio.sleep(0.05)
            try:
                await h.service.segment(request(3), NS)  # one embed running, one waiting
            except Unavailable as exc:
                return exc
            finally:
                hold.set()
                await asyncio.gather(running, queued)
            raise AssertionError("the third embed was queued, not refused")

        exc = h.run(crowd)
        assert exc.status == 503 and exc.retry_after == 2.0
    finally:
        h.close()
