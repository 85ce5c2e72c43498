"""segment_everything through every door, on SAM 2 and on SAM 3 (`model=` picks the family):
sync and async HTTP clients against a live server, the in-process Segmenter, and the CLI;
all give the same masks, as the same result type."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam2serve.client import (
    AsyncSam2Client,
    BadRequestError,
    EverythingResult,
    NotFoundError,
    Sam2Client,
)
from sam2serve.config import Settings
from sam2serve.local.segmenter import Segmenter
from sam2serve.testing import SAM3_TEST_MODEL_ID
from tests.conftest import photos
from tests.helpers_sam3 import (
    both_registries,
    cli_png_locally_and_from,
    link_weights,
    sam3_settings,
)
from tests.helpers_server import threaded_server

RGB = photos()["coffee"][::2, ::2].copy()  # 200 x 300


@dataclass(frozen=True)
class Family:
    """One model family as the SDK reaches it: the `model=` that picks it (None: SAM 2, the
    server's default), its embed method, and generator parameters that keep several masks
    on random weights."""

    name: str
    model: str | None
    embed: str
    params: dict[str, Any]


SAM2 = Family(
    "sam2",
    None,
    "embed_image",
    {"points_per_side": 4, "mask_threshold": 0.2, "stability_score_offset": 0.05,
     "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
)  # fmt: skip
# SAM 3's instance predictor lifts hole logits by 10: a threshold of 1 keeps distinct masks
SAM3 = Family(
    "sam3",
    SAM3_TEST_MODEL_ID,
    "sam3_embed_image",
    {"points_per_side": 4, "mask_threshold": 1.0, "stability_score_offset": 0.5,
     "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
)  # fmt: skip
# SAM 2's full round (hiera-sized work per grid point) stays in the slow pass
FAMILIES = [pytest.param(SAM2, id="sam2", marks=pytest.mark.slow), pytest.param(SAM3, id="sam3")]


def _no_encoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("the in-process Segmenter must hand pixels over, not encode them")


@pytest.fixture(scope="module")
def weights(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights_dir: Path, sam3_tiny_weights_dir: Path
) -> Path:
    target = tmp_path_factory.mktemp("weights-both")
    return link_weights(target, tiny_weights_dir, sam3_tiny_weights_dir)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> Family:
    return request.param


@pytest.fixture(scope="module")
def settings(weights: Path) -> Settings:
    return sam3_settings(weights)


@pytest.fixture(scope="module")
def server(settings: Settings, family: Family) -> Iterator[str]:
    with threaded_server(settings, both_registries()) as url:
        yield url


@pytest.fixture(scope="module")
def local(settings: Settings, family: Family) -> EverythingResult:
    with (
        pytest.MonkeyPatch.context() as mp,
        Segmenter(settings=settings, registry=both_registries()) as seg,
    ):
        mp.setattr("sam2serve.client.mask_calls.encode_image", _no_encoding)
        result = seg.segment_everything(RGB, model=family.model, **family.params)
        # the pixels were cached under their content hash: that id reuses the features
        misses = seg._service.store.local.misses
        image_id = getattr(seg, family.embed)(RGB, model=family.model).image_id
        by_id = seg.segment_everything(image_id=image_id, model=family.model, **family.params)
        assert seg._service.store.local.misses == misses
        assert np.array_equal(by_id.masks, result.masks)
        return result


def test_segmenter_result_is_typed(local: EverythingResult) -> None:
    assert isinstance(local, EverythingResult) and len(local) > 1
    assert local.masks.shape == (len(local), *RGB.shape[:2])
    areas = [p.mask_area for p in local]
    assert areas == sorted(areas, reverse=True)
    assert areas == [int(m.sum()) for m in local.masks]
    det = local.to_detections()
    assert len(det) == len(local) and len(set(det.class_id.tolist())) == len(local)
    drawn = local.annotate()
    assert drawn.shape == RGB.shape and (drawn != RGB).any()


def test_http_clients_equal_the_segmenter(server: str, family: Family, local) -> None:  # type: ignore[no-untyped-def]
    model, params = family.model, family.params
    with Sam2Client(server) as client:
        sync = client.segment_everything(RGB, model=model, **params)
        image_id = getattr(client, family.embed)(RGB, model=model).image_id
        by_id = client.segment_everything(image_id=image_id, model=model, **params)
        with pytest.raises(ValueError, match="points_per_sid"):
            client.segment_everything(RGB, model=model, points_per_sid=3)

    async def go() -> EverythingResult:
        async with AsyncSam2Client(server) as aclient:
            return await aclient.segment_everything(RGB, model=model, **params)

    asynced = asyncio.run(go())
    for result in (sync, by_id, asynced):
        assert np.array_equal(result.masks, local.masks)
        assert np.allclose(result.confidences, local.confidences)


def test_an_id_of_the_other_family_is_not_answered(server: str, family: Family) -> None:
    """SAM 2 and SAM 3 embeddings are kept apart: an id embedded for one family is unknown
    to the other's segment everything (the SDK re-sends the image it kept, if it may)."""
    other = SAM3 if family is SAM2 else SAM2
    with Sam2Client(server, resend_on_miss=False) as client:
        image_id = getattr(client, family.embed)(RGB, model=family.model).image_id
        with pytest.raises(NotFoundError):
            client.segment_everything(image_id=image_id, model=other.model, **other.params)


@pytest.mark.parametrize(
    ("model", "field"), [("hiera_nope", "sam2_version_id"), ("sam3_nope", "model_id")]
)
def test_an_unknown_model_is_a_400_naming_its_field(server: str, model: str, field: str) -> None:
    """The name picks the route; the server then lists its valid ids of that family."""
    with Sam2Client(server) as client, pytest.raises(BadRequestError) as err:
        client.segment_everything(RGB, model=model, points_per_side=2)
    assert err.value.status == 400 and err.value.field == field


def test_cli_draws_the_same_png_locally_and_from_a_server(
    server: str, weights: Path, family: Family, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "photo.png"
    Image.fromarray(RGB).save(src)
    model = ["--model", family.model] if family.model else []
    args = ["everything", str(src), "--points-per-side", "4", "--pred-iou-thresh", "0",
            "--stability-score-thresh", "0", "--json", str(tmp_path / "m.json"),
            *model]  # fmt: skip
    png = cli_png_locally_and_from(server, args, weights, tmp_path, monkeypatch)
    assert png.shape == RGB.shape
    assert json.loads((tmp_path / "m.json").read_text())["predictions"]
