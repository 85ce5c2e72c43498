"""The playground's "Segment everything", on SAM 2 (by the embedded image's id) and on
SAM 3 (by the same id; the image sent once, after the server's 404): masks painted, picked
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
from tests.e2e.test_playground_concept import sam3_server  # noqa: F401  (fixture)

pytestmark = [*pytestmark, pytest.mark.slow]


@pytest.mark.parametrize("family", ["sam2", "sam3"])
def test_segment_everything_and_keep_masks(
    sam3_server: str,  # noqa: F811  (SAM 2 and SAM 3 behind one server)
    photo: Path,  # noqa: F811
    make_page,  # noqa: F811
    family: str,
) -> None:
    p = make_page()
    p.page.set_default_timeout(90_000)  # embed and segment-everything on a shared 2-core box
    p.open(sam3_server, photo)
    page = p.page
    page.fill("#everything-points_per_side", "4")
    page.fill("#everything-pred_iou_thresh", "0")
    page.fill("#everything-stability_score_thresh", "0")
    page.select_option("#everything-family", family)
    route = f"/{family}/segment_everything"
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith(route) else None)
    with page.expect_response(lambda r: r.url.endswith(route) and r.status != 404) as resp:
        page.click("#segment-everything")
    assert resp.value.status == 200, resp.value.text()
    body = json.loads(resp.value.request.post_data)
    assert body["image_id"] and body["points_per_side"] == 4
    if family == "sam2":  # the SAM 2 embedding is reused: no image
        assert statuses == [200] and "image" not in body
    else:  # by id first (SAM 3 has not seen it); then the image, once
        assert statuses == [404, 200] and "image" in body and "sam2_version_id" not in body
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
    if family == "sam3":  # a second run goes by id alone: SAM 3 has the image now
        with page.expect_response(lambda r: r.url.endswith(route)) as again:
            page.click("#segment-everything")
        assert again.value.status == 200
        assert "image" not in json.loads(again.value.request.post_data)
    errors = [e for e in p.errors if "404" not in e]  # the expected by-id miss
    assert not errors, errors
