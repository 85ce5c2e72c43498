"""The playground's "Segment everything": one request by image_id, masks painted, picked
masks kept as ordinary objects (their point + box as prompts, segmented like any other)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_playground import (  # noqa: F401  (fixtures)
    make_page,
    photo,
    pytestmark,
)

pytestmark = [*pytestmark, pytest.mark.slow]


def test_segment_everything_and_keep_masks(server: str, photo: Path, make_page) -> None:  # noqa: F811
    p = make_page()
    p.page.set_default_timeout(90_000)  # embed and segment-everything on a shared 2-core box
    p.open(server, photo)
    page = p.page
    page.fill("#everything-points_per_side", "4")
    page.fill("#everything-pred_iou_thresh", "0")
    page.fill("#everything-stability_score_thresh", "0")
    with page.expect_response("**/sam2/segment_everything") as resp:
        page.click("#segment-everything")
    assert resp.value.status == 200, resp.value.text()
    body = json.loads(resp.value.request.post_data)
    assert "image" not in body and body["image_id"] and body["points_per_side"] == 4
    n = len(resp.value.json()["predictions"])
    assert n >= 1
    page.wait_for_selector("#everything-keep")
    assert page.locator("#everything li").count() == n
    painted = page.evaluate(
        """() => {
          const c = document.getElementById('everything-canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let k = 0;
          for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++;
          return k;
        }"""
    )
    assert painted > 100
    page.locator("#everything li input").first.check()
    seg = p.segment_after(lambda: page.click("#everything-keep"))
    [prompt] = seg["prompts"]["prompts"]
    first = resp.value.json()["predictions"][0]
    assert prompt["points"][0]["x"] == pytest.approx(first["point"][0])
    assert prompt["box"]["width"] == pytest.approx(first["bbox"][2])
    assert page.locator("#everything-keep").count() == 0  # the picker closed
    assert p.painted_mask_pixels() > 0
    assert not p.errors, p.errors
