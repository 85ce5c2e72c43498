"""The playground's "Find every…" (SAM 3): one /sam3/concept_segment by the image's id (the
image sent once, after the server's 404), every instance painted and listed with its score."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_playground import (  # noqa: F401  (fixtures)
    make_page,
    photo,
    pytestmark,
)
from tests.helpers_sam3 import both_registries, link_weights, sam3_settings
from tests.helpers_server import threaded_server

pytestmark = [*pytestmark, pytest.mark.slow]


@pytest.fixture(scope="module")
def sam3_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights_dir: Path, sam3_tiny_weights_dir: Path
) -> Iterator[str]:
    weights = link_weights(
        tmp_path_factory.mktemp("weights-both"), tiny_weights_dir, sam3_tiny_weights_dir
    )
    with threaded_server(sam3_settings(weights), both_registries()) as url:
        yield url


def test_find_every_instance_with_scores(sam3_server: str, photo: Path, make_page) -> None:  # noqa: F811
    p = make_page()
    p.page.set_default_timeout(90_000)
    p.open(sam3_server, photo)
    page = p.page
    # the SAM 2 model list keeps SAM 3 out (it has its own card)
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert "sam3_test_tiny" not in options and "sam3" not in options
    page.fill("#concept-text", "cup, person")
    page.fill("#concept-threshold", "0.1")
    statuses = []
    page.on(
        "response",
        lambda r: statuses.append(r.status) if r.url.endswith("/sam3/concept_segment") else None,
    )
    with page.expect_response(
        lambda r: r.url.endswith("/sam3/concept_segment") and r.status == 200
    ) as resp:
        page.click("#concept-find")
    assert statuses[:1] == [404]  # by id first; then the image, once
    sent = json.loads(resp.value.request.post_data)
    assert [q["text"] for q in sent["prompts"]] == ["cup", "person"] and "image" in sent
    answer = resp.value.json()
    n = sum(len(r["predictions"]) for r in answer["prompt_results"])
    assert n > 0
    page.wait_for_selector("#concept li")
    items = [t.strip() for t in page.locator("#concept li").all_inner_texts()]
    assert items[0].startswith("cup:") and items[1].startswith("person:")
    for item, result in zip(items, answer["prompt_results"], strict=True):
        assert f"{len(result['predictions'])} " in item and str(result["found"]) in item
    first = answer["prompt_results"][0]["predictions"]
    if first:
        assert f"{first[0]['confidence']:.2f}" in items[0]
    painted = page.evaluate(
        """() => {
          const c = document.getElementById('concept-canvas');
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let k = 0;
          for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++;
          return k;
        }"""
    )
    assert painted > 100
    # a second search goes by id alone (the image is embedded for SAM 3 now)
    with page.expect_response("**/sam3/concept_segment") as again:
        page.click("#concept-find")
    assert again.value.status == 200
    assert "image" not in json.loads(again.value.request.post_data)
    errors = [e for e in p.errors if "status of 404" not in e]  # the planned first 404
    assert not errors, errors
