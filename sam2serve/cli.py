"""The `sam2serve` command line: serve, download, models."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sam2serve.config import Settings
from sam2serve.errors import ServiceError

app = typer.Typer(
    help="Segment Anything 2 over HTTP, compatible with Roboflow's /sam2 endpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> Settings:
    """Environment (SAM2SERVE_*) first, then any CLI option the user actually gave."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


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
    Path | None, typer.Option(help="Where checkpoints live [env SAM2SERVE_WEIGHTS_DIR]")
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default 9001]")] = None,
    weights_dir: WeightsDir = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Default sam2_version_id [hiera_tiny]")
    ] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="Require this key (repeatable)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    preload: Annotated[bool, typer.Option(help="Load the default model at start")] = False,
    allow_public_without_keys: Annotated[
        bool, typer.Option(help="Allow a non-loopback bind with no keys")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug | info | warning")] = "info",
) -> None:
    """Run the HTTP server (uvicorn)."""
    import uvicorn

    from sam2serve.api.app import create_app

    settings = _settings(
        host=host,
        port=port,
        weights_dir=weights_dir,
        default_model=model,
        api_keys=api_key or None,
        device=device,
        preload=preload or None,
        allow_public_without_keys=allow_public_without_keys or None,
    )
    try:
        check_bind(settings)
    except ValueError as exc:
        _fail(str(exc))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,  # uvicorn's access log prints query strings, which may hold api_key
        log_level=log_level,
    )


@app.command()
def download(
    model_ids: Annotated[list[str], typer.Argument(help="Ids or aliases, e.g. sam2.1_hiera_tiny")],
    weights_dir: WeightsDir = None,
) -> None:
    """Download official checkpoints into the weights directory."""
    from sam2serve.registry import REGISTRY, resolve_model_id
    from sam2serve.runtime.weights import checkpoint_path
    from sam2serve.runtime.weights import download as fetch

    settings = _settings(weights_dir=weights_dir)
    failed = False
    for requested in model_ids:
        try:
            spec = resolve_model_id(
                requested, registry=REGISTRY, alias_family=settings.alias_family
            )
            target = checkpoint_path(spec, settings.weights_dir)
            if target.is_file():
                typer.echo(f"{spec.model_id}: already present at {target}")
                continue
            path = fetch(spec, settings.weights_dir)
            typer.echo(f"{spec.model_id}: saved {path}")
        except ServiceError as exc:
            typer.echo(f"error: {exc.message}", err=True)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def models(weights_dir: WeightsDir = None) -> None:
    """List model ids, Roboflow aliases, sizes and which checkpoints are present."""
    from sam2serve.registry import REGISTRY, ROBOFLOW_ALIASES
    from sam2serve.runtime.weights import checkpoint_path

    settings = _settings(weights_dir=weights_dir)
    aliases = {
        f"{settings.alias_family}_hiera_{size}": alias for alias, size in ROBOFLOW_ALIASES.items()
    }
    typer.echo(f"weights dir: {settings.weights_dir}")
    for spec in REGISTRY.values():
        present = "present" if checkpoint_path(spec, settings.weights_dir).is_file() else "missing"
        alias = aliases.get(spec.model_id, "")
        typer.echo(f"{spec.model_id:<22} {alias:<13} {spec.size_mb:>5} MB  {present}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
