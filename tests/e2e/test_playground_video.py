"""The playground's Video tab, driven in headless Chromium against a live server (tiny
random-weight model): open a synthetic MP4, scrub to a frame, click an object, propagate,
play back. Every overlay the page draws is compared pixel for pixel with the frame's masks
read back from the API (GET .../frames/{i}), not just checked for "something appeared"."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sam2serve.video.synthetic import synthetic_frames, write_mp4
from tests.e2e.browser import ARTIFACTS, BROWSER_MARKS, watch_errors

pytestmark = BROWSER_MARKS

FRAMES, WIDTH, HEIGHT, FPS = 8, 320, 240, 10
VIEWPORT = {"width": 1000, "height": 800}

#: the overlay canvas as a packed bitmap (1 bit per pixel: alpha > 0), base64
OVERLAY_JS = """(c) => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const bits = new Uint8Array(Math.ceil(d.length / 32));
  for (let i = 0; i < d.length / 4; i++) if (d[4 * i + 3] > 0) bits[i >> 3] |= 128 >> (i & 7);
  let s = '';
  for (const b of bits) s += String.fromCharCode(b);
  return {frame: Number(c.dataset.frame), width: c.width, height: c.height, bits: btoa(s)};
}"""

#: from now on, record every overlay the page draws (playback included) in window.__drawn
RECORD_JS = (
    "(c) => { window.__drawn = []; const snap = "
    + OVERLAY_JS
    + "; c.addEventListener('v-drawn', () => window.__drawn.push(snap(c))); }"
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 frames at 10 fps: a red disc moving right (centre x = 60 + 12 t, y = 120)."""
    path = tmp_path_factory.mktemp("clip") / "shapes.mp4"
    return write_mp4(path, synthetic_frames(FRAMES, WIDTH, HEIGHT), fps=FPS)


def unpack(snapshot: dict[str, Any]) -> np.ndarray:
    """(H, W) bool: the pixels the overlay painted."""
    h, w = snapshot["height"], snapshot["width"]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(snapshot["bits"]), dtype=np.uint8))
    return bits[: h * w].reshape(h, w).astype(bool)


def decode_objects(frame: dict[str, Any]) -> np.ndarray:
    """(H, W) bool: the union of a FrameResult's RLE masks."""
    from pycocotools import mask as coco_mask

    out = np.zeros((HEIGHT, WIDTH), dtype=bool)
    for obj in frame["objects"]:
        rle = obj["mask"]
        out |= coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}) > 0
    return out


def server_masks(server: str, session_id: str, index: int) -> np.ndarray:
    r = httpx.get(f"{server}/sam2/video/sessions/{session_id}/frames/{index}?format=rle")
    assert r.status_code == 200, r.text
    return decode_objects(r.json())


def open_video_tab(new_context: Any, server: str) -> tuple[Any, list[str]]:
    page = new_context(viewport=VIEWPORT).new_page()
    errors = watch_errors(page)
    page.goto(server + "/")
    page.click("#video-tab")
    assert page.locator("#video-panel").is_visible()
    assert not page.locator("main").is_visible()
    return page, errors


def test_track_an_object_through_a_clip(server: str, clip: Path, new_context: Any) -> None:
    page, errors = open_video_tab(new_context, server)
    page.set_default_timeout(60_000)  # model work on a shared 2-core box
    with page.expect_response("**/sam2/video/sessions") as resp:
        page.set_input_files("#v-file", str(clip))
    assert resp.value.status == 200, resp.value.text()
    session = resp.value.json()
    sid = session["session_id"]
    assert (session["num_frames"], session["width"], session["height"]) == (FRAMES, WIDTH, HEIGHT)
    page.wait_for_function("document.getElementById('v-status').textContent.startsWith('8 frames')")
    page.wait_for_function("document.getElementById('v-video').readyState >= 2")
    try:
        # scrub with the frame slider's keyboard, as a user would: frame 3
        page.focus("#v-frame")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        assert page.inner_text("#v-frame-label") == f"Frame 3 / {FRAMES - 1}"
        page.wait_for_function("!document.getElementById('v-video').seeking")
        shown = page.evaluate("document.getElementById('v-video').currentTime")
        assert math.floor(shown * FPS) == 3, shown  # the video shows frame 3 too

        # click the disc (frame 3: centre 96, 120); the point is sent in video pixels
        box = page.locator("#v-canvas").bounding_box()
        assert box is not None and box["width"] == pytest.approx(WIDTH, abs=1)
        assert box["height"] == pytest.approx(HEIGHT, abs=1)  # covers the picture exactly
        x, y = box["x"] + 96 * box["width"] / WIDTH, box["y"] + 120 * box["height"] / HEIGHT
        with page.expect_response("**/prompts") as prompt:
            page.mouse.click(x, y)
        assert prompt.value.status == 200, prompt.value.text()
        sent = json.loads(prompt.value.request.post_data)
        assert (sent["frame_index"], sent["object_id"], sent["format"]) == (3, 1, "rle")
        [point] = sent["points"]
        assert point["positive"] is True
        assert abs(point["x"] - 96) <= 1 and abs(point["y"] - 120) <= 1, point
        page.wait_for_function(
            "document.getElementById('v-status').textContent.startsWith('Frame 3:')"
        )

        # the overlay is exactly the prompt answer, which is exactly what the API reads back
        drawn = page.eval_on_selector("#v-canvas", OVERLAY_JS)
        assert drawn["frame"] == 3
        overlay = unpack(drawn)
        answered = decode_objects(prompt.value.json())
        assert answered.any(), "the prompt answer is empty: nothing to compare"
        np.testing.assert_array_equal(overlay, answered)
        np.testing.assert_array_equal(overlay, server_masks(server, sid, 3))

        # propagate: the progress bar reaches the clip's end
        page.click("#v-propagate")
        page.wait_for_function("document.getElementById('v-status').textContent.startsWith('Done')")
        progress = page.evaluate(
            "[document.getElementById('v-progress').value, "
            "document.getElementById('v-progress').max]"
        )
        assert progress == [FRAMES, FRAMES]
        assert page.is_disabled("#v-stop")
        expected = [server_masks(server, sid, i) for i in range(FRAMES)]
        assert all(m.any() for m in expected), "nothing tracked: the comparisons would be vacuous"
        np.testing.assert_array_equal(
            unpack(page.eval_on_selector("#v-canvas", OVERLAY_JS)), expected[3]
        )

        # play back from the start: frames advance and each overlay is that frame's masks
        page.eval_on_selector("#v-canvas", RECORD_JS)
        page.focus("#v-frame")
        page.keyboard.press("Home")
        assert page.inner_text("#v-frame-label") == f"Frame 0 / {FRAMES - 1}"
        page.click("#v-play")
        last = f"Frame {FRAMES - 1} / {FRAMES - 1}"
        page.wait_for_function(
            "document.getElementById('v-video').ended && "
            f"document.getElementById('v-frame-label').textContent === '{last}'"
        )
        drawn_frames = page.evaluate("window.__drawn")
        order = [d["frame"] for d in drawn_frames]
        assert order[0] == 0 and order[-1] == FRAMES - 1, order
        assert order == sorted(order) and len(set(order)) >= FRAMES // 2, order
        for snap in drawn_frames:
            np.testing.assert_array_equal(
                unpack(snap), expected[snap["frame"]], f"frame {snap['frame']}"
            )
        assert page.inner_text("#v-play") == "Play"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground-video.png"), full_page=True)
        assert errors == []
    finally:
        httpx.delete(f"{server}/sam2/video/sessions/{sid}")


def test_a_file_that_is_not_a_video_gets_a_readable_message(server: str, new_context: Any) -> None:
    page, errors = open_video_tab(new_context, server)
    not_a_video = {
        "name": "holiday.mp4",
        "mimeType": "video/mp4",
        "buffer": b"just some text\n" * 64,
    }
    with page.expect_response("**/sam2/video/sessions") as resp:
        page.set_input_files("#v-file", files=[not_a_video])
    assert 400 <= resp.value.status < 500, resp.value.text()
    message = resp.value.json()["message"]
    page.wait_for_function(
        "document.getElementById('v-status').textContent.startsWith('Could not')"
    )
    assert page.inner_text("#v-status") == f"Could not open the clip: {message}"
    assert page.is_disabled("#v-propagate") and page.is_disabled("#v-play")
    # only the failed upload itself is logged, no script error
    assert all("Failed to load resource" in e for e in errors), errors
