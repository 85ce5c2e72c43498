"""`sam2serve segment --text`: SAM 3 concept segmentation of images (local model or --url),
one annotated PNG per image with every instance of each phrase and its score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sam2serve.cli.support import (
    ANNOTATED_SUFFIX,
    expand_images,
    fail,
    image_outputs,
    open_backend,
    run_batch,
    write_outputs,
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
    pngs, jsons = image_outputs(paths, output, json_out, ANNOTATED_SUFFIX)
    backend = open_backend(url, api_key, model, weights_dir, device, sam3=True)

    def one(i: int, path: Path) -> str:
        result = backend.concept_segment(
            path, texts=texts or None, boxes=boxes or None, threshold=threshold, model=model
        )
        write_outputs(result, pngs[i], jsons and jsons[i])
        return f"{pngs[i]}  {summary(result)}"

    run_batch(paths, one)


def summary(result: Any) -> str:
    """One line for a concept result: "car: 3, person: 1" (and why a prompt was cut)."""
    counts = [f"{name}: {len(result.of_prompt(i))}" for i, name in enumerate(result.class_names)]
    notes = [note for note in result.notes if note]
    return ", ".join(counts) + "".join(f" ({note})" for note in notes)
