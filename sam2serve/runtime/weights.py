"""Checkpoint files: where they live, fetching them atomically, loading them safely."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import httpx
from tqdm import tqdm

from sam2serve.errors import Unavailable
from sam2serve.registry import ModelSpec

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class WeightsError(Unavailable):
    """503: the checkpoint is missing, unreachable or does not match the architecture."""


def checkpoint_path(spec: ModelSpec, weights_dir: Path) -> Path:
    return Path(weights_dir) / spec.filename


def missing_weights_message(spec: ModelSpec, weights_dir: Path, reason: str) -> str:
    if spec.gated:
        return (
            f"weights for {spec.model_id} are not available ({reason}): place {spec.filename} "
            f"in {weights_dir}. The checkpoint is gated, so sam2serve never downloads it: "
            f"request access at {spec.url} (accept the licence, logged in), download "
            f"{spec.filename} from the repository's files, and copy it there unchanged"
        )
    return (
        f"weights for {spec.model_id} are not available ({reason}): place {spec.filename} "
        f"(from {spec.url}) in {weights_dir}, or run `sam2serve download {spec.model_id}` "
        "on a machine with internet access"
    )


def download(
    spec: ModelSpec, weights_dir: Path, *, progress: bool = True, timeout_s: float = 30.0
) -> Path:
    """Fetch `spec.url` into `weights_dir/spec.filename` via a temp file + rename (atomic).

    Raises WeightsError (503) when the download fails; a partial file is never left behind.
    A gated checkpoint (SAM 3) is never downloaded: WeightsError saying how to obtain it.
    """
    if spec.gated:
        raise WeightsError(
            missing_weights_message(spec, weights_dir, "gated: sam2serve never downloads it")
        )
    target = checkpoint_path(spec, weights_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.filename}.", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream("GET", spec.url, follow_redirects=True, timeout=timeout_s) as response,
        ):
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=spec.filename,
                disable=not progress,
            )
            with bar:
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, target)
    except (httpx.HTTPError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            missing_weights_message(spec, weights_dir, f"download failed: {type(exc).__name__}")
        ) from exc
    log.info("downloaded %s to %s", spec.filename, target)
    return target


def ensure_checkpoint(spec: ModelSpec, weights_dir: Path, *, allow_download: bool) -> Path:
    """Return the local checkpoint path, downloading it first if allowed and missing."""
    path = checkpoint_path(spec, weights_dir)
    if path.is_file():
        return path
    if not allow_download or spec.gated:
        raise WeightsError(missing_weights_message(spec, weights_dir, "file not found"))
    return download(spec, weights_dir)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
