"""`sam2serve everything`: segment everything in images, write PNGs with each mask in its
own colour (and optionally the JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam2serve.cli.support import (
    expand_images,
    image_outputs,
    open_backend,
    run_batch,
    write_outputs,
)

SUFFIX = "_everything.png"


def everything(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="PNG path (one image), or a folder"),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the masks (RLE) as JSON")
    ] = None,
    points_per_side: Annotated[int, typer.Option(help="Grid points per side (<= 64)")] = 32,
    pred_iou_thresh: Annotated[float, typer.Option(help="Predicted-IoU filter")] = 0.8,
    stability_score_thresh: Annotated[float, typer.Option(help="Stability filter")] = 0.95,
    crop_n_layers: Annotated[int, typer.Option(help="Crop layers (<= 2)")] = 0,
    min_mask_region_area: Annotated[int, typer.Option(help="Fill holes/specks up to")] = 0,
    use_m2m: Annotated[bool, typer.Option(help="One mask-input refinement step")] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="A SAM 2 id (sam2_version_id), or a SAM 3 id (sam3..., e.g. sam3/sam3_final: "
            "the server's SAM 3) to run it on SAM 3",
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Ask this server instead of a local model")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --url")] = None,
    weights_dir: Annotated[Path | None, typer.Option(help="Local weights folder")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
) -> None:
    """Every object in the image as a mask (Meta's automatic mask generator), each drawn in
    its own colour.

    Example: sam2serve everything photo.jpg -o annotated.png

    Example (on SAM 3): sam2serve everything photo.jpg --model sam3 -o annotated.png
    """
    from sam2serve.client.everything import is_sam3_model

    params = {
        "points_per_side": points_per_side,
        "pred_iou_thresh": pred_iou_thresh,
        "stability_score_thresh": stability_score_thresh,
        "crop_n_layers": crop_n_layers,
        "min_mask_region_area": min_mask_region_area,
        "use_m2m": use_m2m,
    }
    paths = expand_images(images)
    pngs, jsons = image_outputs(paths, output, json_out, SUFFIX)
    backend = open_backend(url, api_key, model, weights_dir, device, sam3=is_sam3_model(model))

    def one(i: int, path: Path) -> str:
        result = backend.segment_everything(path, model=model, **params)
        write_outputs(result, pngs[i], jsons and jsons[i])
        return f"{pngs[i]}: {len(result)} masks"

    run_batch(paths, one)
