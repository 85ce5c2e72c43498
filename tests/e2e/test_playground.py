"""The browser playground at GET /, driven in headless Chromium against a live server.

A real uvicorn server (tiny random-weight model) runs in a background thread; Playwright
drives Debian's chromium (fixtures: tests/e2e/conftest.py). The photo is
larger than the viewport, so every coordinate assertion goes through display scaling.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sam2serve.testing import TEST_MODEL_ID
from tests.conftest import photos, tiny_settings
from tests.e2e.browser import ARTIFACTS, BROWSER_MARKS, watch_errors
from tests.helpers_server import threaded_server

PHOTO_SIZE = (2000, 1500)  # width, height: larger than the viewport on purpose
VIEWPORT = {"width": 1000, "height": 700}
API_KEY = "playground-secret"

pytestmark = BROWSER_MARKS
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")


# ------------------------------------------------------------------ live server + browser


@pytest.fixture(scope="module")
def keyed_server(tiny_weights_dir: Path) -> Iterator[str]:
    with threaded_server(tiny_settings(tiny_weights_dir, api_keys=[API_KEY])) as url:
        yield url


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "astronaut-big.png"
    Image.fromarray(photos()["astronaut"]).resize(PHOTO_SIZE, Image.BILINEAR).save(path)
    return path


class Page:
    """A Playwright page plus what it logged and which segment requests it sent."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors = watch_errors(page)

    def open(self, url: str, photo: Path) -> None:
        """Load the page, pick the photo with the file input and wait for the embed."""
        self.page.goto(url + "/")
        self.page.wait_for_function("document.getElementById('model').options.length > 1")
        with self.page.expect_response("**/sam2/embed_image") as resp:
            self.page.set_input_files("#file", str(photo))
        assert resp.value.status == 200, resp.value.text()
        self.page.wait_for_function(
            "document.getElementById('status-text').textContent.startsWith('Embedded')"
        )

    def segment_after(self, action: Callable[[], None]) -> dict[str, Any]:
        """Run `action`, return the JSON body of the segment request it caused, and wait
        until the page has drawn that request's answer."""
        with self.page.expect_request(
            lambda r: r.url.endswith("/sam2/segment_image") and r.method == "POST"
        ) as req:
            action()
        self.page.wait_for_function(
            "!document.getElementById('result').textContent.startsWith('Segmenting')"
        )
        return json.loads(req.value.post_data)

    def image_box(self) -> dict[str, float]:
        box = self.page.locator("#prompt-canvas").bounding_box()
        assert box is not None
        return box

    def at(self, fx: float, fy: float) -> tuple[float, float]:
        """Viewport coordinates of the point at fractions (fx, fy) of the shown image."""
        b = self.image_box()
        return b["x"] + fx * b["width"], b["y"] + fy * b["height"]

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        """Expected original-image pixel coordinates of viewport point (x, y)."""
        b = self.image_box()
        w, h = PHOTO_SIZE
        return (x - b["x"]) * w / b["width"], (y - b["y"]) * h / b["height"]

    def tolerance(self) -> float:
        """One display pixel, in original-image pixels."""
        return PHOTO_SIZE[0] / self.image_box()["width"] + 0.01

    def painted_mask_pixels(self) -> int:
        return int(
            self.page.evaluate(
                """() => {
                  const c = document.getElementById('mask-canvas');
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                  return n;
                }"""
            )
        )


@pytest.fixture
def make_page(new_context: Callable[..., Any]) -> Callable[..., Page]:
    def make(**context_options: Any) -> Page:
        options = {"viewport": VIEWPORT, "accept_downloads": True, **context_options}
        return Page(new_context(**options).new_page())

    return make


# ------------------------------------------------------------------ tests


def test_embed_and_clicks_carry_the_image_id_in_the_affinity_header(
    server: str, photo: Path, make_page
):
    """The page names the image before embedding it (pg- + sha256 of the uploaded data), so
    a load balancer routes the embed like the clicks; every request repeats the id in
    X-Sam2serve-Image-Id."""
    p = make_page()
    page = p.page
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').options.length > 1")
    with page.expect_request(lambda r: r.url.endswith("/sam2/embed_image")) as req:
        page.set_input_files("#file", str(photo))
    body = json.loads(req.value.post_data)
    want = "pg-" + hashlib.sha256(body["image"]["value"].encode()).hexdigest()[:40]
    assert body["image_id"] == want
    assert req.value.headers["x-sam2serve-image-id"] == want
    page.wait_for_function(
        "document.getElementById('status-text').textContent.startsWith('Embedded')"
    )
    with page.expect_request(lambda r: r.url.endswith("/sam2/segment_image")) as click:
        page.mouse.click(*p.at(0.5, 0.5))
    assert json.loads(click.value.post_data)["image_id"] == want
    assert click.value.headers["x-sam2serve-image-id"] == want
    assert click.value.response().status == 200


def test_click_and_box_send_original_pixels_and_paint_masks(server: str, photo: Path, make_page):
    p = make_page()
    p.open(server, photo)
    page = p.page
    natural = page.evaluate(
        "[document.getElementById('image').naturalWidth, "
        "document.getElementById('image').naturalHeight]"
    )
    assert tuple(natural) == PHOTO_SIZE
    shown = p.image_box()
    assert shown["width"] < PHOTO_SIZE[0] / 2 and shown["height"] <= VIEWPORT["height"]
    tol = p.tolerance()

    # left click = positive point, in original-image pixels
    cx, cy = p.at(0.42, 0.31)
    body = p.segment_after(lambda: page.mouse.click(cx, cy))
    assert "image" not in body and body["image_id"]  # by image_id: the image is not re-sent
    assert body["format"] == "json" and body["polygon_holes"] is True
    assert body["sam2_version_id"] == TEST_MODEL_ID
    [prompt] = body["prompts"]["prompts"]
    [point] = prompt["points"]
    ex, ey = p.to_original(cx, cy)
    assert point["positive"] is True
    assert abs(point["x"] - ex) <= tol and abs(point["y"] - ey) <= tol, (point, ex, ey)
    assert p.painted_mask_pixels() > 100
    assert re.search(r"confidence -?\d\.\d{3} · server \d", page.inner_text("#result"))

    # shift-click and right-click = negative points on the same object
    nx, ny = p.at(0.8, 0.85)
    page.keyboard.down("Shift")
    body = p.segment_after(lambda: page.mouse.click(nx, ny))
    page.keyboard.up("Shift")
    points = body["prompts"]["prompts"][0]["points"]
    assert [q["positive"] for q in points] == [True, False]
    rx, ry = p.at(0.1, 0.9)
    body = p.segment_after(lambda: page.mouse.click(rx, ry, button="right"))
    points = body["prompts"]["prompts"][0]["points"]
    assert [q["positive"] for q in points] == [True, False, False]
    ex, ey = p.to_original(rx, ry)
    assert abs(points[2]["x"] - ex) <= tol and abs(points[2]["y"] - ey) <= tol

    # undo with `u` and Ctrl+Z
    body = p.segment_after(lambda: page.keyboard.press("u"))
    assert len(body["prompts"]["prompts"][0]["points"]) == 2
    body = p.segment_after(lambda: page.keyboard.press("Control+z"))
    assert len(body["prompts"]["prompts"][0]["points"]) == 1

    # `n` = new object; a drag draws its box; one request carries one prompt per object
    page.keyboard.press("n")
    (x0, y0), (x1, y1) = p.at(0.15, 0.2), p.at(0.55, 0.72)

    def drag() -> None:
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
        page.mouse.move(x1, y1, steps=4)
        page.mouse.up()

    body = p.segment_after(drag)
    first, second = body["prompts"]["prompts"]
    assert len(first["points"]) == 1 and "box" not in first
    box = second["box"]
    assert "points" not in second
    (ox0, oy0), (ox1, oy1) = p.to_original(x0, y0), p.to_original(x1, y1)
    expected = {"x": (ox0 + ox1) / 2, "y": (oy0 + oy1) / 2, "width": ox1 - ox0, "height": oy1 - oy0}
    for key, value in expected.items():
        assert abs(box[key] - value) <= tol, (box, expected)
    assert page.locator("#objects li").count() == 2
    assert p.painted_mask_pixels() > 100

    # multimask off is sent as such
    body = p.segment_after(lambda: page.click("#multimask"))
    assert body["multimask_output"] is False

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

    # `c` clears everything: no request, the overlay is empty
    page.keyboard.press("c")
    page.wait_for_function("document.getElementById('objects').children.length === 1")
    assert p.painted_mask_pixels() == 0
    assert p.errors == []


def test_exports_match_the_server(server: str, photo: Path, make_page):
    p = make_page()
    p.open(server, photo)
    page = p.page
    body = p.segment_after(lambda: page.mouse.click(*p.at(0.5, 0.4)))

    # mask PNG: full resolution, equal to the server's exact RLE answer
    with page.expect_response("**/sam2/segment_image") as resp, page.expect_download() as dl:
        page.click("#export-png")
    rle_answer = resp.value.json()
    assert json.loads(resp.value.request.post_data)["format"] == "rle"
    from pycocotools import mask as coco_mask

    rle = rle_answer["predictions"][0]["masks"]
    expected = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    png = np.asarray(Image.open(io.BytesIO(Path(dl.value.path()).read_bytes())).convert("L"))
    assert png.shape == (PHOTO_SIZE[1], PHOTO_SIZE[0])
    assert expected.any()
    np.testing.assert_array_equal(png > 127, expected.astype(bool))

    # JSON (polygons): the answer the page drew
    with page.expect_download() as dl:
        page.click("#export-json")
    exported = json.loads(Path(dl.value.path()).read_text())
    assert exported["predictions"][0]["format"] == "polygon"

    # copy as curl: the exact body the page sent
    page.click("#copy-curl")
    curl = page.inner_text("#snippet")
    assert curl.startswith(f"curl -X POST '{server}/sam2/segment_image'")
    sent = json.loads(re.search(r"-d '(.*)'\s*$", curl, re.S).group(1))
    assert sent == body

    # copy as Python SDK: valid Python with the same point, corner-box comment included
    page.click("#copy-python")
    snippet = page.inner_text("#snippet")
    compile(snippet, "<snippet>", "exec")
    point = body["prompts"]["prompts"][0]["points"][0]
    assert f"points=[({point['x']}, {point['y']}, True)]" in snippet
    assert f'image_id="{body["image_id"]}"' in snippet
    assert "from sam2serve.client import Sam2Client" in snippet
    assert p.errors == []


def test_stale_answer_never_overwrites_a_newer_one(server: str, photo: Path, make_page):
    p = make_page()
    p.open(server, photo)
    page = p.page
    held: list[Any] = []

    def hold_first(route: Any) -> None:
        if not held:
            held.append(route)  # answered later, after the newer request
        else:
            route.continue_()

    page.route("**/sam2/segment_image", hold_first)
    page.mouse.click(*p.at(0.3, 0.3))
    page.wait_for_function("document.getElementById('result').textContent === 'Segmenting…'")
    assert len(held) == 1
    body = p.segment_after(lambda: page.mouse.click(*p.at(0.6, 0.6)))
    assert len(body["prompts"]["prompts"][0]["points"]) == 2
    newer = page.inner_text("#result")
    fake = {
        "predictions": [
            {
                "masks": [[[0, 0], [1999, 0], [1999, 1499], [0, 1499]]],
                "confidence": 0.5,
                "format": "polygon",
            }
        ],
        "time": 9.99,
    }
    # the page aborted this request; if the browser still takes the answer, it is ignored
    with contextlib.suppress(sync_api.Error):
        held[0].fulfill(status=200, content_type="application/json", body=json.dumps(fake))
    page.wait_for_timeout(300)
    assert page.inner_text("#result") == newer
    assert "9.99" not in newer
    # the whole-image fake mask was not drawn
    canvas = page.evaluate(
        "[document.getElementById('mask-canvas').width, "
        "document.getElementById('mask-canvas').height]"
    )
    assert p.painted_mask_pixels() < canvas[0] * canvas[1] * 0.9
    page.unroute("**/sam2/segment_image")


def test_missing_api_key_shows_a_readable_message(keyed_server: str, photo: Path, make_page):
    p = make_page()
    page = p.page
    page.goto(keyed_server + "/")
    page.wait_for_selector("#auth", state="visible")  # /info says auth: true
    with page.expect_response("**/sam2/embed_image") as resp:
        page.set_input_files("#file", str(photo))
    assert resp.value.status == 401
    error = page.locator("#error")
    error.wait_for(state="visible")
    text = error.inner_text()
    assert "401" in text and "API key is required" in text and "API key field" in text
    assert page.locator("#stage").is_visible()  # never a blank screen

    # entering the key re-embeds, clears the error and keeps the key for next time
    page.fill("#api-key", API_KEY)
    with page.expect_response("**/sam2/embed_image") as resp:
        page.click("#auth-form button")
    assert resp.value.status == 200
    assert resp.value.request.headers["authorization"] == f"Bearer {API_KEY}"
    page.wait_for_function(
        "document.getElementById('status-text').textContent.startsWith('Embedded')"
    )
    assert not error.is_visible()
    body = p.segment_after(lambda: page.mouse.click(*p.at(0.5, 0.5)))
    assert body["image_id"]
    assert page.evaluate("localStorage.getItem('sam2serve.apiKey')") == API_KEY
    page.reload()
    assert page.locator("#api-key").input_value() == API_KEY
    # only the expected 401 was logged
    assert all("401" in e for e in p.errors), p.errors


def test_server_error_message_is_shown(server: str, photo: Path, make_page):
    p = make_page()
    p.open(server, photo)
    page = p.page
    # the model exists in /info but its weights are absent and downloads are off: 503
    page.select_option("#model", "sam2.1_hiera_large")
    error = page.locator("#error")
    error.wait_for(state="visible")
    text = error.inner_text()
    assert "503" in text and "sam2.1_hiera_large.pt" in text
    assert page.locator("#stage").is_visible()


def test_model_chooser_lists_models_from_info(server: str, make_page):
    import httpx

    info = httpx.get(server + "/info").json()
    p = make_page()
    page = p.page
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').options.length > 1")
    values = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert values == [m["id"] for m in info["models"]]
    assert page.input_value("#model") == info["default_model"] == TEST_MODEL_ID
    assert p.errors == []


def test_phone_width_layout(server: str, photo: Path, make_page):
    p = make_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    p.open(server, photo)
    page = p.page
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    shown = p.image_box()
    assert shown["x"] >= 0 and shown["x"] + shown["width"] <= 390
    cx, cy = p.at(0.5, 0.5)
    body = p.segment_after(lambda: page.touchscreen.tap(cx, cy))
    [point] = body["prompts"]["prompts"][0]["points"]
    ex, ey = p.to_original(cx, cy)
    tol = p.tolerance()
    assert abs(point["x"] - ex) <= tol and abs(point["y"] - ey) <= tol
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)
    assert p.errors == []


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_open_by_drop_and_paste(server: str, make_page, how: str):
    p = make_page()
    page = p.page
    page.goto(server + "/")
    page.wait_for_function("document.getElementById('model').options.length > 1")
    # a small PNG made in the page, handed over as a dropped or pasted file
    script = """async (how) => {
      const c = document.createElement('canvas');
      c.width = 320; c.height = 240;
      const g = c.getContext('2d');
      g.fillStyle = '#345'; g.fillRect(0, 0, 320, 240);
      g.fillStyle = '#fc3'; g.fillRect(80, 60, 160, 120);
      const blob = await new Promise((r) => c.toBlob(r, 'image/png'));
      const dt = new DataTransfer();
      dt.items.add(new File([blob], 'made.png', {type: 'image/png'}));
      const ev = how === 'drop'
        ? new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})
        : new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true});
      (how === 'drop' ? document.getElementById('dropzone') : document.body).dispatchEvent(ev);
    }"""
    with page.expect_response("**/sam2/embed_image") as resp:
        page.evaluate(script, how)
    assert resp.value.status == 200
    page.wait_for_function(
        "document.getElementById('status-text').textContent.startsWith('Embedded')"
    )
    assert "320\u00d7240" in page.inner_text("#image-name")
    assert p.errors == []
