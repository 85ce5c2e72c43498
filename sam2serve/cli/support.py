"""Helpers of the image commands (`segment`, `segment --text`, `everything`, `embed`):
inputs, outputs, backends, the batch loop, error triage.

`fail` prints one line to stderr and exits (code 2 = usage error), so no user error ever
shows a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ANNOTATED_SUFFIX = "_annotated.png"


def read_prompts(path: Path | None) -> Any:
    if path is None:
        return None
    import json

    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--prompts {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"--prompts {path}: not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc


def expand_images(items: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.is_file()
                and p.suffix.lower() in IMAGE_SUFFIXES
                and not p.name.endswith(ANNOTATED_SUFFIX)
            )
            if not found:
                fail(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            fail(f"image not found: {item}")
    return paths


def outputs(
    paths: list[Path], target: Path | None, suffix: str, option: str, file_suffixes: tuple
) -> list[Path]:
    """One output path per input: `target` is a file (one input) or a folder."""
    if target is not None and not target.is_dir() and target.suffix.lower() in file_suffixes:
        if len(paths) > 1:
            fail(f"{option} {target}: with several images, give a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return [target]
    folder = target or Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    out = []
    for path in paths:
        name, n = f"{path.stem}{suffix}", 1
        while name in used:
            n += 1
            name = f"{path.stem}_{n}{suffix}"
        used.add(name)
        out.append(folder / name)
    return out


def image_outputs(
    paths: list[Path], output: Path | None, json_out: Path | None, suffix: str
) -> tuple[list[Path], list[Path] | None]:
    """Each image's PNG (`-o`: a file for one image, or a folder) and, with `--json`, its
    JSON path."""
    pngs = outputs(paths, output, suffix, "-o", IMAGE_SUFFIXES)
    jsons = outputs(paths, json_out, ".json", "--json", (".json",)) if json_out else None
    return pngs, jsons


def write_outputs(result: Any, png: Path, json_path: Path | None) -> None:
    """A result's annotated PNG (its own drawing) and, if asked, its JSON."""
    result.save_annotated(png)
    if json_path is not None:
        import json

        json_path.write_text(json.dumps(result.to_json()))


def run_batch(paths: list[Path], one: Callable[[int, Path], str]) -> None:
    """`one(i, path)` over the images, printing the line it returns for each. A failed image
    is reported on stderr and the rest go on; an error that would repeat for every image
    stops the batch (exit 2 for a usage error, else 1); exit 1 if any image failed."""
    batch = len(paths) > 1
    failed = 0
    bar = progress(len(paths), batch)
    with bar:
        for i, path in enumerate(paths):
            try:
                bar.write(one(i, path), file=sys.stdout)
            except Exception as exc:
                if not is_handled(exc):
                    raise  # a bug, not a user error: keep the traceback
                if is_fatal(exc):
                    bar.close()
                    fail(one_line(exc), 2 if is_usage(exc) else 1)
                failed += 1
                bar.write(f"error: {path}: {one_line(exc)}", file=sys.stderr)
            bar.update()
    if batch:
        typer.echo(f"{len(paths) - failed} of {len(paths)} images done, {failed} failed", err=True)
    if failed:
        raise typer.Exit(1)


def require_server_extra(what: str) -> None:
    """Exit with the install command when the [server] extra (torch, SAM2, FastAPI...) is
    missing: the base install is the client side only."""
    import importlib.util

    missing = [
        m for m in ("torch", "sam2", "fastapi", "uvicorn") if not importlib.util.find_spec(m)
    ]
    if missing:
        fail(
            f"{what} needs the server extra ({', '.join(missing)} not installed): "
            "pip install 'sam2serve[server]'"
        )


def open_backend(
    url: str | None,
    api_key: str | None,
    model: str | None,
    weights_dir: Path | None,
    device: str | None,
    *,
    sam3: bool = False,
) -> Any:
    """A `Sam2Client` for --url, else a local `Segmenter` with its model loaded now (`sam3`:
    the SAM 3 model `model` names, or SAM2SERVE_SAM3_MODEL's)."""
    if url:
        from sam2serve.client import Sam2Client

        return Sam2Client(url, api_key)
    import warnings

    require_server_extra("a local model (or pass --url to use a server)")
    from sam2serve.local.segmenter import Segmenter

    # upstream SAM2 model code uses torch.jit.script, which newer torch flags as deprecated
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script", category=FutureWarning)
    try:
        if sam3:
            segmenter = Segmenter(weights_dir=weights_dir, device=device)
            segmenter.load_sam3(model)  # unknown id -> 400, missing weights -> 503
        else:
            segmenter = Segmenter(model, weights_dir=weights_dir, device=device)
            segmenter.load()  # unknown id -> 400, missing weights -> 503: before any image
    except Exception as exc:
        if not is_handled(exc):
            raise
        fail(one_line(exc), 2 if is_usage(exc) else 1)
    return segmenter


def progress(total: int, show: bool) -> Any:
    from tqdm import tqdm

    # shown on a terminal only (disable=None): logs and pipes get no bar noise
    return tqdm(
        total=total, disable=None if show else True, file=sys.stderr, unit="image", desc="segment"
    )


def is_handled(exc: Exception) -> bool:
    from sam2serve.client.errors import Sam2Error

    return isinstance(exc, (Sam2Error, ValueError, OSError))


def is_usage(exc: Exception) -> bool:
    """Errors in what the user asked for (same for every image)."""
    from sam2serve.client.errors import BadRequestError, InvalidRequestError

    if isinstance(exc, InvalidRequestError):
        return True
    if not isinstance(exc, BadRequestError) or exc.field in (None, "body"):
        return False
    return exc.field != "image" and not exc.field.startswith("image.")  # not the image's fault


def is_fatal(exc: Exception) -> bool:
    """Errors that would repeat for every image: stop the batch."""
    from sam2serve.client.errors import BadRequestError, Sam2Error

    return is_usage(exc) or (isinstance(exc, Sam2Error) and not isinstance(exc, BadRequestError))


def one_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())
