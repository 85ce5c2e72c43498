"""The `sam2serve` command line: serve, segment, embed, download, models."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from sam2serve.cli.concept import concept
from sam2serve.cli.everything import everything
from sam2serve.cli.support import (
    ANNOTATED_SUFFIX,
    expand_images,
    fail,
    image_outputs,
    is_handled,
    is_usage,
    one_line,
    open_backend,
    read_prompts,
    require_server_extra,
    run_batch,
    write_outputs,
)
from sam2serve.cli.track import track
from sam2serve.config import Settings
from sam2serve.errors import ServiceError

app = typer.Typer(
    help="Segment Anything 2 over HTTP, compatible with Roboflow's /sam2 endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> Settings:
    """Environment (SAM2SERVE_*) first, then any CLI option the user actually gave."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        fail(f"{where}: {first['msg']} (from a command option or SAM2SERVE_{where.upper()})")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse to expose an open server: non-loopback binds need keys or an explicit flag."""
    exposed = not is_loopback(settings.host) and not settings.api_keys
    if exposed and not settings.allow_public_without_keys:
        raise ValueError(
            f"refusing to bind {settings.host} with no API keys: set SAM2SERVE_API_KEYS "
            "(or --api-key), or pass --allow-public-without-keys if you really mean it"
        )


WeightsDir = Annotated[
    Path | None, typer.Option(help="Where checkpoints live (env SAM2SERVE_WEIGHTS_DIR)")
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: 9001)")] = None,
    weights_dir: WeightsDir = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Default sam2_version_id (default: hiera_tiny)")
    ] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="Require this key (repeatable)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="auto (measured choice) | torch (exact fp32) | openvino | openvino-bf16 | "
            "openvino-f32 | openvino-int8"
        ),
    ] = None,
    preload: Annotated[
        bool | None,
        typer.Option(help="Load the default model at start, in the background (default: on)"),
    ] = None,
    allow_public_without_keys: Annotated[
        bool, typer.Option(help="Allow a non-loopback bind with no keys")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Run the HTTP server (uvicorn)."""
    require_server_extra("serve")
    from sam2serve.api.app import create_app
    from sam2serve.api.server import serve as serve_app

    settings = _settings(
        host=host,
        port=port,
        weights_dir=weights_dir,
        default_model=model,
        api_keys=api_key or None,
        device=device,
        runtime=runtime,
        preload=preload,
        allow_public_without_keys=allow_public_without_keys or None,
    )
    try:
        check_bind(settings)
    except ValueError as exc:
        fail(str(exc))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    from sam2serve.runtime.memory import pin_mmap_threshold

    pin_mmap_threshold()  # keeps RSS per cached image at the features' own size
    serve_app(create_app(settings), settings, log_level)  # JSON 400s, SIGTERM -> exit 0


Url = Annotated[
    str | None,
    typer.Option(
        help="Use the server at this URL (e.g. http://127.0.0.1:9001) instead of a local model"
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        envvar="SAM2SERVE_API_KEY", help="Key for --url (sent as the api_key query param)"
    ),
]
Model = Annotated[
    str | None, typer.Option("--model", help="sam2_version_id, e.g. hiera_tiny, sam2.1_hiera_large")
]
Device = Annotated[str | None, typer.Option(help="Local model: auto | cpu | cuda | cuda:N")]


@app.command(no_args_is_help=True)
def segment(
    images: Annotated[
        list[Path], typer.Argument(help="Image files and/or folders (their image files)")
    ],
    point: Annotated[
        list[str] | None,
        typer.Option(
            "--point",
            "-p",
            help="X,Y (positive) or X,Y,neg. Repeatable: ALL points go into ONE prompt",
        ),
    ] = None,
    box: Annotated[
        list[str] | None,
        typer.Option(
            "--box",
            "-b",
            help="X1,Y1,X2,Y2 CORNER box (top-left, bottom-right). The first box joins the "
            "points' prompt; each further --box is a prompt of its own",
        ),
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help='JSON file with the API\'s prompts (CENTER boxes): {"prompts": [...]}, a list, '
            "or one prompt; --point/--box prompts are added after them",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Annotated PNG path (one image), or a folder (default: ./<name>_annotated.png)",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the result JSON: a .json file, or a folder"),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option("--format", help="Mask format asked for and written to --json: rle | polygon"),
    ] = "rle",
    multimask: Annotated[
        bool, typer.Option(help="Best of 3 proposals per prompt (--no-multimask: one mask)")
    ] = True,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            "-t",
            help="SAM 3: every instance of this noun phrase. Repeatable (one prompt each); "
            "--box then gives exemplar boxes (with one --text: of that phrase)",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="SAM 3 (--text): score threshold (default the model's 0.5)"),
    ] = None,
    model: Model = None,
    url: Url = None,
    api_key: ApiKey = None,
    weights_dir: WeightsDir = None,
    device: Device = None,
) -> None:
    """Segment images and write annotated PNGs (mask overlay + outline + prompts).

    With --text, SAM 3 finds every instance of each phrase (e.g. --text car): each instance
    is drawn in its phrase's colour with its score; the model is SAM2SERVE_SAM3_MODEL's (or
    --model, a SAM 3 id).

    Runs a local model by default (weights from --weights-dir / SAM2SERVE_WEIGHTS_DIR), or
    asks the server at --url. Several images or a folder run as a batch: a failed image is
    reported on stderr and the rest go on; the exit code is 1 if any failed, 2 on usage errors.

    Example: sam2serve segment photo.jpg --point 320,240 --box 100,80,540,400 -o annotated.png

    Example: sam2serve segment photo.jpg --text car -o out.png
    """
    from sam2serve.client.prompt_builder import build_prompts, parse_box, parse_point

    if fmt not in ("rle", "polygon"):
        fail(f"--format must be rle or polygon, not {fmt!r}")
    if text or threshold is not None:
        if point or prompts_file:
            fail("--text (SAM 3) takes --box exemplars only, not --point or --prompts")
        concept(images, text or [], box or [], threshold, output, json_out, model, url,
                api_key, weights_dir, device)  # fmt: skip
        return
    try:
        points = [parse_point(p) for p in point or []]
        boxes = [parse_box(b) for b in box or []]
        prompts = build_prompts(read_prompts(prompts_file), points or None, boxes or None)
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    paths = expand_images(images)
    pngs, jsons = image_outputs(paths, output, json_out, ANNOTATED_SUFFIX)
    backend = open_backend(url, api_key, model, weights_dir, device)

    def one(i: int, path: Path) -> str:
        result = backend.segment_image(
            path, prompts=prompts, multimask_output=multimask, format=fmt, model=model
        )
        write_outputs(result, pngs[i], jsons and jsons[i])
        return str(pngs[i])

    run_batch(paths, one)


@app.command(no_args_is_help=True)
def embed(
    image: Annotated[Path, typer.Argument(help="Image file")],
    image_id: Annotated[
        str | None, typer.Option(help="Your name for it (default: the content hash)")
    ] = None,
    model: Model = None,
    url: Url = None,
    api_key: ApiKey = None,
    weights_dir: WeightsDir = None,
    device: Device = None,
) -> None:
    """Embed an image and print its image_id.

    With --url the server keeps the embedding cached, so later segment_image requests can
    send just the id. Without --url it runs locally and prints the id a server would use
    (the content hash, unless --image-id is given).
    """
    if not image.is_file():
        fail(f"image not found: {image}")
    backend = open_backend(url, api_key, model, weights_dir, device)
    try:
        typer.echo(backend.embed_image(image, image_id=image_id, model=model).image_id)
    except Exception as exc:
        if not is_handled(exc):
            raise
        fail(one_line(exc), 2 if is_usage(exc) else 1)


@app.command()
def download(
    model_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Ids or aliases, e.g. sam2.1_hiera_tiny hiera_large (default: the default model)"
        ),
    ] = None,
    weights_dir: WeightsDir = None,
    build_runtime: Annotated[
        bool,
        typer.Option(
            help=(
                "Also export the fast CPU runtime's graphs now (else done on first load); with "
                "SAM2SERVE_VIDEO_PRECISION=fast, the video graphs too"
            )
        ),
    ] = False,
) -> None:
    """Download official checkpoints into the weights directory (progress bar, atomic)."""
    from sam2serve.registry import REGISTRY, SAM3_ALIASES, SAM3_REGISTRY, resolve_model_id
    from sam2serve.runtime.weights import checkpoint_path, missing_weights_message
    from sam2serve.runtime.weights import download as fetch

    settings = _settings(weights_dir=weights_dir)
    specs = []
    for requested in model_ids or [settings.default_model]:
        gated = SAM3_REGISTRY.get(SAM3_ALIASES.get(requested, requested))
        if gated is not None:  # SAM 3: placed by hand, never downloaded
            target = checkpoint_path(gated, settings.weights_dir)
            if not target.is_file():
                fail(missing_weights_message(gated, settings.weights_dir, "gated"))
            typer.echo(f"{gated.model_id}: already present at {target}")
            continue
        try:
            specs.append(
                resolve_model_id(requested, registry=REGISTRY, alias_family=settings.alias_family)
            )
        except ServiceError as exc:
            fail(exc.message)
    failed = False
    for spec in specs:
        target = checkpoint_path(spec, settings.weights_dir)
        if target.is_file():
            typer.echo(f"{spec.model_id}: already present at {target}")
            continue
        try:
            path = fetch(spec, settings.weights_dir)
        except ServiceError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            failed = True
        else:
            typer.echo(f"{spec.model_id}: saved {path}")
    if build_runtime and settings.runtime != "torch" and not failed:
        from sam2serve.runtime.openvino_export import BackendUnavailable
        from sam2serve.runtime.openvino_runtime import prepare_for_weights_dir
        from sam2serve.video.config import VideoSettings

        precision = settings.runtime.removeprefix("openvino-")
        for spec in specs:
            try:
                built = prepare_for_weights_dir(
                    spec,
                    settings.weights_dir,
                    settings.runtime_cache_dir,
                    "auto" if precision == "openvino" else precision,  # type: ignore[arg-type]
                    allow_download=False,
                )
            except (BackendUnavailable, ServiceError) as exc:
                typer.echo(f"error: {spec.model_id}: runtime not built: {exc}", err=True)
                failed = True
            else:
                typer.echo(f"{spec.model_id}: fast runtime ready in {built}")
            if not failed and VideoSettings().precision == "fast":
                from sam2serve.runtime.openvino_video import build_video_cache

                checkpoint = checkpoint_path(spec, settings.weights_dir)
                built = build_video_cache(spec, checkpoint, settings.runtime_cache_dir)
                typer.echo(f"{spec.model_id}: fast video graphs ready in {built}")
    if failed:
        raise typer.Exit(1)


@app.command()
def models(weights_dir: WeightsDir = None) -> None:
    """List model ids, Roboflow aliases, sizes and which checkpoints are present (SAM 2, then
    SAM 3, whose gated checkpoint is placed by hand: the line says where to obtain it)."""
    from sam2serve.registry import ROBOFLOW_ALIASES, SAM3_ALIASES, all_specs
    from sam2serve.runtime.weights import checkpoint_path

    settings = _settings(weights_dir=weights_dir)
    aliases = {
        f"{settings.alias_family}_hiera_{size}": alias for alias, size in ROBOFLOW_ALIASES.items()
    }
    for alias, model_id in SAM3_ALIASES.items():
        aliases.setdefault(model_id, alias)
    typer.echo(f"weights dir: {settings.weights_dir}")
    for spec in all_specs().values():
        present = "present" if checkpoint_path(spec, settings.weights_dir).is_file() else "missing"
        if spec.gated and present == "missing":
            present += f" (gated: obtain {spec.filename} from {spec.url}, place it by hand)"
        alias = aliases.get(spec.model_id, "")
        typer.echo(f"{spec.model_id:<22} {alias:<16} {spec.size_mb:>5} MB  {present}")


app.command(no_args_is_help=True)(everything)
app.command(no_args_is_help=True)(track)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
