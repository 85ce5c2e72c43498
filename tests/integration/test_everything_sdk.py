"""segment_everything through every door: sync and async HTTP clients against a live
server, the in-process Segmenter, and the CLI; all give the same masks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sam2serve.client import AsyncSam2Client, EverythingResult, Sam2Client
from sam2serve.local.segmenter import Segmenter
from sam2serve.testing import registry_with_test_model
from tests.conftest import photos, tiny_settings
from tests.helpers_server import threaded_server

pytestmark = pytest.mark.slow

RGB = photos()["coffee"][::2, ::2].copy()  # 200 x 300
PARAMS = {
    "points_per_side": 4,
    "mask_threshold": 0.2,
    "stability_score_offset": 0.05,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
}


def _no_encoding(*args: object, **kwargs: object) -> None:
    raise AssertionError("the in-process Segmenter must hand pixels over, not encode them")


@pytest.fixture(scope="module")
def local(tiny_weights_dir: Path) -> EverythingResult:
    settings = tiny_settings(tiny_weights_dir, runtime="torch")
    with (
        pytest.MonkeyPatch.context() as mp,
        Segmenter(settings=settings, registry=registry_with_test_model()) as seg,
    ):
        mp.setattr("sam2serve.client.everything.encode_image", _no_encoding)
        result = seg.segment_everything(RGB, **PARAMS)
        # the pixels were cached under their content hash: that id reuses the features
        misses = seg._service.store.local.misses
        image_id = seg.embed_image(RGB).image_id
        by_id = seg.segment_everything(image_id=image_id, **PARAMS)
        assert seg._service.store.local.misses == misses
        assert np.array_equal(by_id.masks, result.masks)
        return result


def test_segmenter_result_is_typed(local: EverythingResult) -> None:
    assert isinstance(local, EverythingResult) and len(local) > 0
    assert local.masks.shape == (len(local), *RGB.shape[:2])
    areas = [p.mask_area for p in local]
    assert areas == sorted(areas, reverse=True)
    assert areas == [int(m.sum()) for m in local.masks]
    det = local.to_detections()
    assert len(det) == len(local) and len(set(det.class_id.tolist())) == len(local)
    drawn = local.annotate()
    assert drawn.shape == RGB.shape and (drawn != RGB).any()


def test_http_clients_equal_the_segmenter(tiny_weights_dir: Path, local) -> None:  # type: ignore[no-untyped-def]
    with threaded_server(tiny_settings(tiny_weights_dir, runtime="torch")) as url:
        with Sam2Client(url) as client:
            sync = client.segment_everything(RGB, **PARAMS)
            image_id = client.embed_image(RGB).image_id
            by_id = client.segment_everything(image_id=image_id, **PARAMS)
            with pytest.raises(ValueError, match="points_per_sid"):
                client.segment_everything(RGB, points_per_sid=3)

        async def go() -> EverythingResult:
            async with AsyncSam2Client(url) as aclient:
                return await aclient.segment_everything(RGB, **PARAMS)

        asynced = asyncio.run(go())
    for result in (sync, by_id, asynced):
        assert np.array_equal(result.masks, local.masks)
        assert np.allclose(result.confidences, local.confidences)


def test_cli_writes_an_annotated_png(tiny_weights_dir: Path, tmp_path: Path) -> None:
    from sam2serve.cli.main import app

    src = tmp_path / "photo.png"
    Image.fromarray(RGB).save(src)
    out = tmp_path / "annotated.png"
    with threaded_server(tiny_settings(tiny_weights_dir, runtime="torch")) as url:
        result = CliRunner().invoke(
            app,
            ["everything", str(src), "-o", str(out), "--points-per-side", "4",
             "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--url", url,
             "--json", str(tmp_path / "m.json")],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out)).shape == RGB.shape
    assert "masks" in result.output
