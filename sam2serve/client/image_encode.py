"""Image inputs of the SDK: path, bytes, PIL image, numpy array or URL -> API `image` field.

- a path (`str` / `os.PathLike`): the file's bytes are sent as they are (base64); the server
  decodes them and applies EXIF orientation;
- `bytes`: an encoded image file (JPEG, PNG, ...), sent as it is;
- a PIL image: its pixels as shown by PIL (no EXIF rotation applied), encoded as PNG;
- a numpy array: ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, uint8 (or bool),
  encoded as lossless PNG. Arrays are RGB by default; pass ``bgr=True`` for OpenCV arrays;
- a string starting with ``http://`` or ``https://``: sent as ``{"type": "url"}``; the SERVER
  fetches it under its URL policy (https and public addresses only, by default).
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "EncodedImage",
    "ImageLike",
    "encode_image",
    "is_url",
    "load_rgb",
    "read_image_file",
    "with_png_mode",
]

ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]

# Pillow modes a PNG can hold as they are; anything else is converted to RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})
# EXIF orientations that swap width and height (transpose / rotate 90 / transverse / 270)
_SWAPS_AXES = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class EncodedImage:
    """The API's `image` field plus what the client knows about the picture.

    payload: ``{"type": "base64" | "url", "value": str}``.
    size: ``(height, width)`` in pixels after EXIF orientation, or None when unknown
        (URL input, or bytes Pillow cannot read: the server will say why).
    """

    payload: dict[str, str]
    size: tuple[int, int] | None


def is_url(value: object) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def encode_image(image: ImageLike, *, bgr: bool = False) -> EncodedImage:
    """Turn any supported input into the API's `image` field (see module docstring)."""
    if isinstance(image, str) and is_url(image):
        return EncodedImage({"type": "url", "value": image}, None)
    if isinstance(image, (str, os.PathLike)):
        data = read_image_file(image)
        return EncodedImage(_b64(data), _header_size(data))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return EncodedImage(_b64(data), _header_size(data))
    if isinstance(image, Image.Image):
        im = with_png_mode(image)
        buf = io.BytesIO()
        im.save(buf, format="PNG", compress_level=1)
        return EncodedImage(_b64(buf.getvalue()), (image.height, image.width))
    if isinstance(image, np.ndarray):
        arr = _check_array(image)
        ok, png = cv2.imencode(".png", _to_cv2_order(arr, bgr), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:  # pragma: no cover - cv2 only fails on shapes _check_array refuses
            raise ValueError(f"could not encode an array of shape {arr.shape} as PNG")
        return EncodedImage(_b64(png.tobytes()), (int(arr.shape[0]), int(arr.shape[1])))
    raise TypeError(
        f"image must be a path, bytes, PIL image, numpy array or http(s) URL, "
        f"got {type(image).__name__}"
    )


def load_rgb(image: ImageLike, *, bgr: bool = False, timeout_s: float = 30.0) -> np.ndarray:
    """Pixels of an input as the server sees them: ``(H, W, 3)`` uint8 RGB.

    Files and bytes are decoded with the server's own decoder (EXIF orientation applied,
    every pixel mode to RGB); URLs are downloaded with httpx (for drawing only).
    """
    from sam2serve.errors import ServiceError
    from sam2serve.media.decode import decode_image_bytes

    if isinstance(image, np.ndarray):
        arr = _check_array(image)
        if arr.ndim == 2:
            return np.repeat(arr[:, :, None], 3, axis=2)
        arr = arr[:, :, :3]
        return np.ascontiguousarray(arr[:, :, ::-1] if bgr else arr)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if isinstance(image, str) and is_url(image):
        import httpx

        response = httpx.get(image, follow_redirects=True, timeout=timeout_s)
        response.raise_for_status()
        data = response.content
    elif isinstance(image, (str, os.PathLike)):
        data = read_image_file(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        raise TypeError(f"cannot read pixels from {type(image).__name__}")
    try:
        return decode_image_bytes(data, max_pixels=1 << 40).rgb
    except ServiceError as exc:
        raise ValueError(exc.message) from exc


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    from sam2serve.errors import ServiceError
    from sam2serve.media.decode import decode_image_bytes

    try:  # the PNG we send, decoded as the server does: identical pixels
        return decode_image_bytes(
            base64.b64decode(encode_image(image).payload["value"]), max_pixels=1 << 40
        ).rgb
    except ServiceError as exc:
        raise ValueError(exc.message) from exc


def _b64(data: bytes) -> dict[str, str]:
    return {"type": "base64", "value": base64.b64encode(data).decode("ascii")}


def with_png_mode(image: Image.Image) -> Image.Image:
    """The image itself if PNG holds its pixel mode as it is, else converted to RGB."""
    return image if image.mode in _PNG_MODES else image.convert("RGB")


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an image file; FileNotFoundError (with a hint for URLs) if it is none."""
    p = Path(path)
    if not p.is_file():
        hint = "" if p.exists() else " (for a URL, start it with https://)"
        what = "is not a file" if p.exists() else "not found"
        raise FileNotFoundError(f"image file {what}: {p}{hint}")
    return p.read_bytes()


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) after EXIF orientation, read from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112)
    except Exception:  # not an image Pillow knows: the server answers with a clear 400
        return None
    if orientation in _SWAPS_AXES:
        width, height = height, width
    return (height, width)


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(
            f"numpy images must be uint8 (0..255), got {arr.dtype}; e.g. "
            "(arr * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(
            f"numpy images must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"numpy image is empty: shape {arr.shape}")
    return arr


def _to_cv2_order(arr: np.ndarray, bgr: bool) -> Any:
    """cv2.imencode wants BGR(A): RGB(A) input is flipped, BGR input passes through."""
    if arr.ndim == 2 or bgr:
        return arr
    if arr.shape[2] == 3:
        return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
