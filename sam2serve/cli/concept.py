"""`sam2serve segment --text`: SAM 3 concept segmentation of images (local model or --url),
one annotated PNG per image with every instance of each phrase and its score."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from sam2serve.cli.support import (
    ANNOTATED_SUFFIX,
    IMAGE_SUFFIXES,
    expand_images,
    fail,
    is_fatal,
    is_handled,
    is_usage,
    one_line,
    open_backend,
    outputs,
    progress,
)


def concept(
    images: list[Path],
    texts: list[str],
    box: list[str],
    threshold: float | None,
    output: Path | None,
    json_out: Path | None,
    model: str | None,
    url: str | None,
    api_key: str | None,
    weights_dir: Path | None,
    device: str | None,
) -> None:
    """`segment --text`: SAM 3 concept segmentation over the images (same batch rules)."""
    from sam2serve.client.prompt_builder import parse_box

    try:
        boxes = [parse_box(b) for b in box]
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    if len(texts) > 1 and boxes:
        fail("exemplar --box goes with one --text (or none)")
    paths = expand_images(images)
    batch = len(paths) > 1
    pngs = outputs(paths, output, ANNOTATED_SUFFIX, "-o", IMAGE_SUFFIXES)
    jsons = outputs(paths, json_out, ".json", "--json", (".json",)) if json_out else None
    backend = open_backend(url, api_key, model, weights_dir, device, sam3=True)
    failed = 0
    bar = progress(len(paths), batch)
    with bar:
        for i, path in enumerate(paths):
            try:
                summary = concept_one(
                    backend, path, texts, boxes, threshold, model, pngs[i], jsons and jsons[i]
                )
                bar.write(f"{pngs[i]}  {summary}", file=sys.stdout)
            except Exception as exc:
                if not is_handled(exc):
                    raise
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


def concept_one(
    backend: Any,
    path: Path,
    texts: list[str],
    boxes: list[tuple[float, float, float, float]],
    threshold: float | None,
    model: str | None,
    png: Path,
    json_path: Path | None,
) -> str:
    """SAM 3 on one image: every instance of each phrase (the boxes: exemplars), written as an
    annotated PNG (and JSON); returns a one-line summary ("car: 3, person: 1")."""
    import json

    from PIL import Image

    result = backend.concept_segment(
        path,
        texts=texts or None,
        boxes=boxes or None,
        threshold=threshold,
        model=model,
    )
    Image.fromarray(result.annotate()).save(png)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_json()))
    counts = [f"{name}: {len(result.of_prompt(i))}" for i, name in enumerate(result.class_names)]
    notes = [note for note in result.notes if note]
    return ", ".join(counts) + "".join(f" ({note})" for note in notes)
