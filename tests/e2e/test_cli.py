"""The `sam2serve` command line, run as a subprocess: segment (local model and --url), batch
over a folder with a corrupt file, embed, models, download, help and usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam2serve.client import Sam2Client
from sam2serve.media.postprocess import rle_to_mask
from sam2serve.registry import REGISTRY, ROBOFLOW_ALIASES
from tests.conftest import photos
from tests.integration.test_sdk import live_server

SAM2SERVE = str(Path(sys.executable).with_name("sam2serve"))


def cli(*args: object, weights_dir: Path | None = None, cwd: Path | None = None):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "SAM2SERVE_ALLOW_DOWNLOAD": "false",
        "SAM2SERVE_DEVICE": "cpu",
        "SAM2SERVE_RUNTIME": "torch",
    }
    if weights_dir is not None:
        env["SAM2SERVE_WEIGHTS_DIR"] = str(weights_dir)
    return subprocess.run(
        [SAM2SERVE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(result, code: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real photos, resized to ~400 px, as JPEG and PNG."""
    folder = tmp_path_factory.mktemp("cli-images")
    out = {}
    for name, suffix in (("coffee", ".jpg"), ("chelsea", ".png")):
        im = Image.fromarray(photos()[name])
        im.thumbnail((400, 400))
        out[name] = folder / f"{name}{suffix}"
        im.save(out[name])
    return out


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# -- fast: no model needed ---------------------------------------------------------------


def test_help_everywhere() -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in ("serve", "segment", "embed", "download", "models"):
        assert command in top.stdout
        assert cli(command, "--help").returncode == 0
    text = " ".join(cli("segment", "--help").stdout.split())
    for words in ("CORNER", "ONE prompt", "--url", "--prompts", "--json", "exit code"):
        assert words in text


def test_models_lists_ids_aliases_and_presence(tmp_path: Path) -> None:
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    result = cli("models", "--weights-dir", tmp_path)
    assert result.returncode == 0
    for model_id in REGISTRY:
        assert model_id in result.stdout
    for alias in ROBOFLOW_ALIASES:
        assert alias in result.stdout
    tiny = next(line for line in result.stdout.splitlines() if "sam2.1_hiera_tiny" in line)
    assert "present" in tiny and "149 MB" in tiny
    sam3 = next(line for line in result.stdout.splitlines() if line.startswith("sam3 "))
    for words in ("sam3/sam3_final", "missing", "gated", "sam3.pt", "huggingface.co/facebook/sam3"):
        assert words in sam3


def test_download_unknown_id_is_a_usage_error(tmp_path: Path) -> None:
    assert_one_line_error(cli("download", "vit_h", "--weights-dir", tmp_path), 2, "vit_h")


def test_download_sam3_says_how_to_obtain_it(tmp_path: Path) -> None:
    """SAM 3's checkpoint is gated: never fetched, the error says where to get and put it."""
    result = cli("download", "sam3/sam3_final", "--weights-dir", tmp_path)
    assert_one_line_error(result, 2, "sam3.pt")
    for words in ("gated", "huggingface.co/facebook/sam3", str(tmp_path)):
        assert words in result.stderr
    (tmp_path / "sam3.pt").write_bytes(b"x")
    present = cli("download", "sam3", "--weights-dir", tmp_path)
    assert present.returncode == 0 and "already present" in present.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["missing.jpg", "--point", "1,2"], "not found"),
        (["{coffee}", "--point", "1,x"], "--point"),
        (["{coffee}", "--point", "1,2,maybe"], "--point"),
        (["{coffee}", "--box", "300,200,100,50"], "X1 <= X2"),
        (["{coffee}", "--format", "png"], "--format"),
        (["{coffee}", "--prompts", "missing.json"], "--prompts"),
        (["{coffee}", "{chelsea}", "-o", "one.png"], "folder"),
        (["{coffee}", "--model", "vit_h"], "vit_h"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    images: dict[str, Path], tmp_path: Path, args: list[str], words: str
) -> None:
    args = [a.format(coffee=images["coffee"], chelsea=images["chelsea"]) for a in args]
    assert_one_line_error(cli("segment", *args, weights_dir=tmp_path, cwd=tmp_path), 2, words)


def test_missing_weights_exit_1_naming_the_fix(images: dict[str, Path], tmp_path: Path) -> None:
    result = cli("segment", images["coffee"], "--point", "1,2", weights_dir=tmp_path, cwd=tmp_path)
    assert_one_line_error(result, 1, "sam2.1_hiera_tiny.pt", "sam2serve download")


# -- against a live server (tiny test model) ----------------------------------------------


def test_segment_and_embed_with_url(
    images: dict[str, Path], tmp_path: Path, tiny_weights_dir: Path
) -> None:
    with live_server(tiny_weights_dir) as url:
        png, out_json = tmp_path / "remote.png", tmp_path / "remote.json"
        result = cli(
            "segment", images["coffee"], "--url", url, "--point", "200,130",
            "--box", "100,50,300,250", "--box", "0,0,80,60", "-o", png,
            "--json", out_json, "--format", "polygon",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(png)
        assert Image.open(png).size == Image.open(images["coffee"]).size
        answer = json.loads(out_json.read_text())
        assert [p["format"] for p in answer["predictions"]] == ["polygon", "polygon"]

        embedded = cli("embed", images["chelsea"], "--url", url)
        assert embedded.returncode == 0, embedded.stderr
        with Sam2Client(url) as client:
            assert embedded.stdout.strip() == client.embed_image(images["chelsea"]).image_id
        named = cli("embed", images["chelsea"], "--url", url, "--image-id", "cat-1")
        assert named.stdout.strip() == "cat-1"
        bad_id = cli("embed", images["chelsea"], "--url", url, "--image-id", "a/b")
        assert_one_line_error(bad_id, 2, "image_id")
        bad_model = cli("segment", images["coffee"], "--url", url, "--model", "vit_h")
        assert_one_line_error(bad_model, 2, "vit_h")
    gone = cli("segment", images["coffee"], "--url", url, "-o", tmp_path / "x.png")
    assert_one_line_error(gone, 1, "cannot reach")


# -- local model: the real hiera_tiny architecture (random weights) ---------------------


@pytest.mark.slow
def test_segment_locally_writes_the_annotated_png(
    images: dict[str, Path], tmp_path: Path, real_weights_dir: Path
) -> None:
    source = images["coffee"]
    result = cli(
        "segment", source, "--point", "200,130", "--point", "20,20,neg",
        "--json", tmp_path / "out.json", "--no-multimask",
        weights_dir=real_weights_dir, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    png = tmp_path / "coffee_annotated.png"  # default name, in the current directory
    assert result.stdout.strip() == str(png) and png.is_file()
    before, after = _pixels(source), _pixels(png)
    assert after.shape == before.shape
    (pred,) = json.loads((tmp_path / "out.json").read_text())["predictions"]
    mask = rle_to_mask(pred["masks"])
    assert mask.shape == before.shape[:2] and mask.any()
    changed = (after != before).any(axis=2)
    assert changed[mask].mean() > 0.95  # overlay wherever the mask is
    import cv2

    near = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    near[100:160, 170:230] = True  # the points drawn
    near[:50, :50] = True
    assert not changed[~near].any()  # untouched elsewhere


@pytest.mark.slow
def test_batch_over_a_folder_with_one_corrupt_file(
    images: dict[str, Path], tmp_path: Path, real_weights_dir: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images.values():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image: skipped")
    out = tmp_path / "out"
    result = cli(
        "segment", folder, "--box", "50,50,250,200", "-o", out, weights_dir=real_weights_dir
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "image" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == [
        "chelsea_annotated.png",
        "coffee_annotated.png",
    ]
    for name, path in images.items():
        assert Image.open(out / f"{name}_annotated.png").size == Image.open(path).size
    assert "2 of 3 images done, 1 failed" in result.stderr
