"""Image input: client bytes (base64 or a fetched URL) -> RGB uint8 pixels + content hash.

Everything a client sends passes through here before it reaches a model:

- only JPEG, PNG, WEBP, BMP and TIFF are opened (Pillow's other plugins are never tried);
- the pixel count is checked from the file header, before any pixels are decoded, and so is
  any budget of the caller's that depends on the image size (`check_header`, e.g. the
  per-request mask budget: prompts x pixels);
- the image is fully decoded (a truncated file is an error, never partial pixels);
- EXIF orientation is applied, and every pixel mode (grayscale, alpha, palette, CMYK, 16-bit,
  1-bit, float) becomes RGB uint8.

numpy / pickle payloads are refused: unpickling client data can run arbitrary code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio.to_thread
import numpy as np
from PIL import Image, ImageOps

from sam2serve.errors import BadRequest, PayloadTooLarge, ServiceError

if TYPE_CHECKING:
    from sam2serve.config import Settings
    from sam2serve.media.fetch import UrlFetcher

#: Pillow plugin ids tried when opening client bytes, in this order.
ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")
_ACCEPTED_TEXT = "JPEG, PNG, WEBP, BMP or TIFF"
_SEND_HINT = (
    'send {"type": "base64", "value": <base64 of a PNG/JPEG file>} or '
    '{"type": "url", "value": "https://..."}'
)
_DATA_URI = re.compile(r"data:([^,]{0,200}),", re.IGNORECASE)
_URLSAFE_TO_STD = str.maketrans("-_", "+/")
_PICKLE_KINDS = frozenset({"numpy", "numpy_object", "pil", "pickle", "rgb", "ndarray"})


@dataclass(frozen=True)
class LoadedImage:
    """Decoded client image.

    rgb: (H, W, 3) uint8, C-contiguous, RGB order, EXIF orientation applied. Treat as
        read-only: `content_hash` was computed from these pixels.
    content_hash: sha256 hex over the shape and the pixel bytes (see `rgb_content_hash`).
    """

    rgb: np.ndarray
    content_hash: str

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


def rgb_content_hash(rgb: np.ndarray) -> str:
    """sha256 hex of an (H, W, 3) uint8 array: shape first, then the C-order pixel bytes.

    Same pixels in a different shape (e.g. 2x6 vs 3x4) give different hashes.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    digest = hashlib.sha256(f"rgb-u8:{'x'.join(map(str, rgb.shape))};".encode())
    digest.update(memoryview(rgb).cast("B"))
    return digest.hexdigest()


def _bad_image(why: str) -> BadRequest:
    return BadRequest(
        f"image: {why}. Accepted: a {_ACCEPTED_TEXT} file (first frame of multi-page files).",
        field="image",
    )


def _too_many_pixels(width: int, height: int, max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image: {width}x{height} = {width * height} pixels is over this server's cap of "
        f"{max_pixels} pixels (max_image_pixels); downscale the image and send it again",
        field="image",
    )


#: `check_header(width, height)`: a caller's budget checked from the file header, before any
#: pixel is decoded; it raises (a `ServiceError`) to refuse the image
HeaderCheck = Callable[[int, int], None]


def decode_image_bytes(
    data: bytes, *, max_pixels: int, check_header: HeaderCheck | None = None
) -> LoadedImage:
    """Decode an encoded image file into RGB uint8 pixels.

    Args:
        data: the file's bytes (JPEG, PNG, WEBP, BMP or TIFF).
        max_pixels: cap on width * height, checked from the header before decoding.
        check_header: called with the header's (width, height) before decoding (before
            EXIF orientation: the pixel count is what it may rely on).

    Returns:
        LoadedImage with rgb (H, W, 3) uint8 after EXIF orientation.

    Raises:
        BadRequest: empty, not an image, unsupported format, truncated or corrupt data.
        PayloadTooLarge: more than `max_pixels` pixels (also Pillow's decompression-bomb guard).
    """
    if not data:
        raise _bad_image("no image data (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise _bad_image(f"the header gives an empty size {width}x{height}")
            if width * height > max_pixels:
                raise _too_many_pixels(width, height, max_pixels)
            if check_header is not None:
                check_header(width, height)
            im.load()  # full decode now: a truncated file raises here instead of later
            ImageOps.exif_transpose(im, in_place=True)
            rgb = _to_rgb_array(im)
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(
            f"image: the file declares more pixels than this server decodes (cap "
            f"{max_pixels} pixels, max_image_pixels); downscale the image and send it again",
            field="image",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise _bad_image("the data is not an image in a supported format") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ...) on bad files
        raise _bad_image("the image data is truncated or corrupt and could not be decoded") from exc
    return LoadedImage(rgb=rgb, content_hash=rgb_content_hash(rgb))


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> writable, C-contiguous (H, W, 3) uint8 RGB; alpha is dropped."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _gray_to_uint8(np.asarray(im), mode)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode != "RGB":
        if mode in ("P", "PA") and (mode == "PA" or "transparency" in im.info):
            # palette transparency must go through RGBA (Pillow warns otherwise); alpha dropped
            im = im.convert("RGBA")
        elif mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
            im = im.convert("RGBA")
        try:
            im = im.convert("RGB")
        except ValueError as exc:
            raise _bad_image(f"pixel mode {mode!r} cannot be converted to RGB") from exc
    return np.array(im, dtype=np.uint8, order="C")  # copy: writable (torch warns otherwise)


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) 16-bit / 32-bit int / float gray -> (H, W) uint8, scaled (never clipped).

    16-bit data (I;16*, and mode I within [0, 65535]) maps 0..65535 linearly to 0..255.
    Float data within [0, 1] maps to 0..255. Anything else is min-max scaled to 0..255.
    """
    if mode.startswith("I;16"):
        wide = values.astype(np.uint32)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)
    data = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(data.min()) if data.size else 0.0
    hi = float(data.max()) if data.size else 0.0
    if mode == "I" and lo >= 0 and hi <= 65535:
        scale, offset = 255.0 / 65535.0, 0.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scale, offset = 255.0, 0.0
    elif hi > lo:
        scale, offset = 255.0 / (hi - lo), lo
    else:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((data - offset) * scale), 0, 255).astype(np.uint8)


def decode_base64(
    value: str, *, max_bytes: int, max_pixels: int, check_header: HeaderCheck | None = None
) -> LoadedImage:
    """Decode a base64 image string into RGB pixels.

    Accepts an optional `data:image/...;base64,` prefix, whitespace and newlines anywhere,
    missing `=` padding, and the urlsafe alphabet (`-` and `_`).

    Args:
        value: the base64 text.
        max_bytes: cap on the decoded file size in bytes.
        max_pixels: cap on width * height (see `decode_image_bytes`).
        check_header: the caller's size check before decoding (see `decode_image_bytes`).

    Raises:
        BadRequest (field image.value): empty or malformed base64; (field image) bad image data.
        PayloadTooLarge: decoded bytes over `max_bytes`, or pixels over `max_pixels`.
    """
    text = value.strip()
    prefix = _DATA_URI.match(text)
    if prefix is not None:
        if not prefix.group(1).lower().endswith(";base64"):
            raise _bad_base64("the data: URI must be base64-encoded (data:image/png;base64,...)")
        text = text[prefix.end() :]
    text = "".join(text.split()).translate(_URLSAFE_TO_STD).rstrip("=")
    if not text:
        raise _bad_base64("it is empty")
    if len(text) % 4 == 1:
        raise _bad_base64("its length is not possible for base64 (truncated?)")
    if len(text) * 3 // 4 > max_bytes:
        raise _too_many_bytes(len(text) * 3 // 4, max_bytes)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad_base64("it contains characters outside the base64 alphabet") from exc
    if len(data) > max_bytes:
        raise _too_many_bytes(len(data), max_bytes)
    return decode_image_bytes(data, max_pixels=max_pixels, check_header=check_header)


def _bad_base64(why: str) -> BadRequest:
    return BadRequest(
        f"image.value: not valid base64 ({why}); send the file's bytes base64-encoded, "
        "optionally with a data:image/...;base64, prefix",
        field="image.value",
    )


def _too_many_bytes(size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image.value: the decoded image is {size} bytes, over the cap of {max_bytes} bytes; "
        "send a smaller (or more compressed) image",
        field="image.value",
    )


async def load_image(
    kind: str,
    value: str,
    *,
    settings: Settings,
    fetcher: UrlFetcher,
    run: Callable[..., Awaitable[LoadedImage]] | None = None,
    check_header: HeaderCheck | None = None,
) -> LoadedImage:
    """Load a request's `image` ({"type": kind, "value": value}) as RGB pixels.

    kind "base64": decoded with caps settings.max_body_bytes / settings.max_image_pixels.
    kind "url": fetched with `fetcher` (its own URL policy and byte cap), then decoded.
    Any other kind (numpy, numpy_object, pil, pickle, ...) -> BadRequest (field image.type).
    Decoding runs in a worker thread, so the event loop keeps serving while it runs: `run(fn,
    *args)` runs it (e.g. a lane's worker below the clicks' priority; default: anyio's threads).
    `check_header(width, height)` runs before any pixel is decoded (see `decode_image_bytes`).
    """
    run = run or anyio.to_thread.run_sync
    normalized = kind.strip().lower() if isinstance(kind, str) else ""
    if normalized == "base64":
        return await run(_decode_base64_call, value, settings, check_header)
    if normalized == "url":
        data = await fetcher.fetch(value)
        return await run(_decode_bytes_call, data, settings, check_header)
    if normalized in _PICKLE_KINDS:
        raise BadRequest(
            f"image.type {kind!r} is refused: numpy/PIL payloads arrive pickled, and unpickling "
            f"client data can run arbitrary code on the server; {_SEND_HINT}",
            field="image.type",
        )
    raise BadRequest(
        f"image.type {kind!r} is not supported: use 'base64' or 'url' (numpy/pickle payloads "
        f"are refused because unpickling client data can run arbitrary code); {_SEND_HINT}",
        field="image.type",
    )


def _decode_base64_call(
    value: str, settings: Settings, check_header: HeaderCheck | None
) -> LoadedImage:
    return decode_base64(
        value,
        max_bytes=settings.max_body_bytes,
        max_pixels=settings.max_image_pixels,
        check_header=check_header,
    )


def _decode_bytes_call(
    data: bytes, settings: Settings, check_header: HeaderCheck | None
) -> LoadedImage:
    return decode_image_bytes(data, max_pixels=settings.max_image_pixels, check_header=check_header)


def from_rgb(rgb: np.ndarray, *, max_pixels: int) -> LoadedImage:
    """Pixels decoded in this process ((H, W, 3) uint8 RGB) -> `LoadedImage`, under the same
    pixel cap as an upload (the in-process Segmenter hands images over this way)."""
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return LoadedImage(rgb=rgb, content_hash=rgb_content_hash(rgb))


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image's pixels as shown (no EXIF rotation) -> (H, W, 3) uint8 RGB, every mode
    converted as a decoded upload's is (alpha dropped, 16-bit gray scaled)."""
    return _to_rgb_array(im)
