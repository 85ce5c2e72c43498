"""SAM 3 pre-labels through a real Label Studio (the one of tests/e2e/test_label_studio.py):
an image project whose BrushLabels has two labels, its task uploaded, sam2serve (tiny SAM 3,
seeded random weights) connected, "Retrieve predictions" asked through Label Studio's API;
the stored prediction decodes (label-studio-sdk's converter) to exactly the instances
/sam3/concept_segment gives for the labels' phrases at the same threshold."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2serve.media import postprocess
from tests.conftest import photos
from tests.e2e.label_studio_env import LabelStudio, ensure_venv, running_label_studio
from tests.e2e.test_label_studio import KEY, _api, _brush_mask, _ok, _project
from tests.helpers_sam3 import both_registries, link_weights, sam3_settings, threshold_in_band
from tests.helpers_server import threaded_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Cup"/><Label value="Saucer"/></BrushLabels>
</View>"""
PHRASES = ["cup", "saucer"]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    exe = ensure_venv()
    with running_label_studio(exe, tmp_path_factory.mktemp("ls-data")) as ls:
        yield ls


def _concept(api, png: bytes, threshold: float) -> list[dict]:  # type: ignore[no-untyped-def]
    return _ok(
        api.post(
            "/sam3/concept_segment",
            json={
                "image": {"type": "base64", "value": base64.b64encode(png).decode()},
                "format": "rle",
                "output_prob_thresh": threshold,
                "prompts": [{"type": "text", "text": p} for p in PHRASES],
            },
        )
    )["prompt_results"]


def test_prelabel_project(
    label_studio: LabelStudio,
    tmp_path: Path,
    tiny_weights_dir: Path,
    sam3_tiny_weights_dir: Path,
) -> None:
    buf = io.BytesIO()
    Image.fromarray(photos()["coffee"]).save(buf, format="PNG")
    png = buf.getvalue()
    weights = link_weights(tmp_path / "weights", tiny_weights_dir, sam3_tiny_weights_dir)

    def settings(threshold: float):  # type: ignore[no-untyped-def]
        return sam3_settings(
            weights,
            api_keys=[KEY],
            label_studio_url=label_studio.url,
            label_studio_api_key=label_studio.token,
            label_studio_prelabel_threshold=threshold,
        )

    # the phrases' score bands (random weights), from our own API: a threshold inside both
    with threaded_server(settings(0.5), both_registries()) as url, _api(url) as api:
        every = _concept(api, png, 0.0)
    scores = [np.array([p["confidence"] for p in r["predictions"]]) for r in every]
    threshold = threshold_in_band(scores)

    with (
        threaded_server(settings(threshold), both_registries()) as url,
        _api(url) as api,
        label_studio.client() as ls,
    ):
        want = [
            (label, p["confidence"], postprocess.rle_to_mask(p["masks"]))
            for label, r in zip(["Cup", "Saucer"], _concept(api, png, threshold), strict=True)
            for p in r["predictions"]
        ]
        assert {label for label, _, _ in want} == {"Cup", "Saucer"}
        made = _project(ls, url, CONFIG, "coffee.png", png)
        _ok(
            ls.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": made["project"]},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
        )
        [prediction] = _ok(ls.get("/api/predictions", params={"task": made["task"]["id"]}))
        got = [
            (r["value"]["brushlabels"][0], r["score"], _brush_mask(r)) for r in prediction["result"]
        ]
        assert [(la, s) for la, s, _ in got] == [(la, s) for la, s, _ in want]
        for (_, _, mask), (_, _, expected) in zip(got, want, strict=True):
            np.testing.assert_array_equal(mask, expected)
        assert prediction["score"] == pytest.approx(np.mean([s for _, s, _ in want]))
