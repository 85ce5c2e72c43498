"""The SDK's video sessions and `sam2serve track`, against the app on the tiny model."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sam2serve.client import NotFoundError, Sam2Client
from sam2serve.testing import TEST_MODEL_ID, registry_with_test_model
from sam2serve.video.frames import _decoded
from sam2serve.video.synthetic import synthetic_frames, write_mp4

pytestmark = [pytest.mark.video]
FRAMES = 4


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return write_mp4(tmp_path / "clip.mp4", synthetic_frames(FRAMES))


@pytest.fixture
def sdk(client) -> Sam2Client:  # type: ignore[no-untyped-def]
    return Sam2Client("http://testserver", transport=client._transport)


def test_sdk_session_round_trip(sdk: Sam2Client, client, clip: Path) -> None:  # type: ignore[no-untyped-def]
    with sdk.video_session(clip) as session:
        assert (session.num_frames, session.width, session.height) == (FRAMES, 320, 240)
        first = session.add_prompt(0, 3, points=[(60, 120), (200, 40, False)])
        assert first.frame_index == 0 and first.object_ids == [3]
        assert first.masks.shape == (1, 240, 320) and first.masks.dtype == bool
        second = session.add_prompt(0, 5, box=(210, 20, 280, 90))
        assert second.object_ids == [3, 5]

        frames = list(session.propagate())
        assert [f.frame_index for f in frames] == list(range(FRAMES))
        # the stream and the stored frame agree, mask for mask
        again = session.frame(2)
        np.testing.assert_array_equal(again.masks, frames[2].masks)
        np.testing.assert_allclose(again.scores, frames[2].scores)

        detections = frames[1].to_detections()
        assert list(detections.tracker_id) == [3, 5]
        assert detections.mask.shape == (2, 240, 320)

        partial = list(session.propagate(max_frames=1))
        assert [f.frame_index for f in partial] == [0, 1]
        session.remove_object(3)
        with pytest.raises(NotFoundError):
            session.remove_object(3)
    assert client.get("/sam2/video/info").json()["open"] == 0


def test_sdk_frames_list(sdk: Sam2Client) -> None:
    with sdk.video_session(synthetic_frames(2, 64, 48)) as session:
        assert (session.num_frames, session.width, session.height) == (2, 64, 48)


@pytest.fixture
def track(client, tiny_weights_dir: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """track(where, args) -> CliRunner result of `sam2serve track` asking the app on the tiny
    model (where="url") or running the tiny model in-process (where="local")."""
    import sam2serve.client as client_pkg
    import sam2serve.wiring as wiring
    from sam2serve.cli.main import app

    patched = functools.partial(Sam2Client, transport=client._transport)
    monkeypatch.setattr(client_pkg, "Sam2Client", patched)
    monkeypatch.setattr(wiring, "REGISTRY", registry_with_test_model())
    monkeypatch.setenv("SAM2SERVE_ALLOW_DOWNLOAD", "false")

    def run(where: str, args: list[str]):  # type: ignore[no-untyped-def]
        if where == "url":
            backend = ["--url", "http://testserver"]
        else:
            backend = ["--weights-dir", str(tiny_weights_dir), "--device", "cpu"]
        return CliRunner().invoke(app, ["track", *args, *backend])

    return run


def test_track_cli_writes_video_and_masks(  # type: ignore[no-untyped-def]
    client, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sam2serve.client as client_pkg
    from sam2serve.cli.main import app

    patched = functools.partial(Sam2Client, transport=client._transport)
    monkeypatch.setattr(client_pkg, "Sam2Client", patched)
    out, masks = tmp_path / "tracked.mp4", tmp_path / "masks"
    args = ["track", str(clip), "--frame", "1", "--point", "60,120", "--box", "210,20,280,90"]
    args += ["--box", "20,20,60,60", "-o", str(out), "--masks-dir", str(masks)]
    result = CliRunner().invoke(app, [*args, "--url", "http://testserver"])
    assert result.exit_code == 0, result.output
    written = list(_decoded(out))
    assert len(written) == FRAMES and written[0].shape == (240, 320, 3)
    names = sorted(p.name for p in masks.iterdir())
    assert names == sorted(f"{i:05d}_obj{o}.png" for i in range(FRAMES) for o in (1, 2))
    png = np.asarray(Image.open(masks / "00001_obj1.png"))
    assert png.shape == (240, 320) and set(np.unique(png)) <= {0, 255}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--point", "1,2,3,4"], "--point"),
        ([], "at least one --point or --box"),
        (["--box", "5,5,1,1"], "--box"),
    ],
)
def test_track_cli_usage_errors(clip: Path, args: list[str], words: str) -> None:
    from sam2serve.cli.main import app

    result = CliRunner().invoke(app, ["track", str(clip), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output


def test_track_cli_local_model_writes_what_the_server_does(  # type: ignore[no-untyped-def]
    track, clip: Path, tmp_path: Path
) -> None:
    """In-process (the default) and --url: the same session calls, the same files."""
    args = [str(clip), "--frame", "1", "--point", "60,120", "--box", "210,20,280,90"]
    args += ["-m", TEST_MODEL_ID]
    written = {}
    for where in ("url", "local"):
        masks = tmp_path / f"masks-{where}"
        out = [*args, "-o", str(tmp_path / f"{where}.mp4"), "--masks-dir", str(masks)]
        result = track(where, out)
        assert result.exit_code == 0, result.output
        written[where] = {p.name: np.asarray(Image.open(p)) for p in sorted(masks.iterdir())}
    assert sorted(written["local"]) == sorted(f"{i:05d}_obj1.png" for i in range(FRAMES))
    assert any(m.any() for m in written["local"].values()), "vacuous: nothing tracked"
    for name, mask in written["url"].items():
        np.testing.assert_array_equal(written["local"][name], mask)
    assert len(list(_decoded(tmp_path / "local.mp4"))) == FRAMES


@pytest.mark.parametrize("where", ["local", "url"])
@pytest.mark.parametrize(
    ("frame", "model", "code", "words"),
    [
        ("9", TEST_MODEL_ID, 2, "error: frame_index 9 is out of range: the video has 4 frames"),
        ("0", "nope", 2, "error: unknown sam2_version_id 'nope'"),
        ("0", "hiera_small", 1, "error: weights for sam2.1_hiera_small are not available"),
    ],
)
def test_track_cli_errors_exit_alike_both_ways(  # type: ignore[no-untyped-def]
    track, clip: Path, tmp_path: Path, where: str, frame: str, model: str, code: int, words: str
) -> None:
    """The SDK's typed errors, from the server or the in-process model: one line, exit code 2
    for what the user asked (400, 413, 415, 422), 1 for the rest (here: 503, no weights)."""
    args = [str(clip), "--frame", frame, "--point", "60,120", "-m", model]
    result = track(where, [*args, "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == code, result.output
    assert result.output.strip().splitlines()[-1].startswith(words), result.output
    assert not (tmp_path / "out.mp4").exists()
