"""The playground's video module: served as an ES module, and the RLE decoder it uses is exact."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sam2serve.media import postprocess

STATIC = Path(__file__).resolve().parents[2] / "sam2serve" / "static"


def test_page_loads_the_video_module() -> None:
    page = (STATIC / "index.html").read_text()
    assert '<script type="module" src="/static/video.js"></script>' in page
    source = (STATIC / "video.js").read_text()
    assert 'import { decodeRle } from "./js/rle.js";' in source


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's JS")
@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (240, 320)])
def test_js_rle_decoder_matches_pycocotools(shape: tuple[int, int], tmp_path: Path) -> None:
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.7
    mask[: shape[0] // 2, : shape[1] // 3] = True
    data = tmp_path / "rle.json"
    data.write_text(json.dumps(postprocess.mask_to_rle(mask)))
    module = (STATIC / "js" / "rle.js").as_uri()
    script = (
        f"import {{ decodeRle }} from {json.dumps(module)};"
        "import { readFileSync } from 'node:fs';"
        f"const rle = JSON.parse(readFileSync({json.dumps(str(data))}, 'utf8'));"
        "process.stdout.write(Array.from(decodeRle(rle)).join(''));"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, check=True
    )
    decoded = np.array([c == "1" for c in out.stdout], dtype=bool).reshape(shape)
    np.testing.assert_array_equal(decoded, mask)
