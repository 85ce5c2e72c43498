"""In-process SAM2: the SDK's embed/segment calls on a local model, no server, no HTTP.

    from sam2serve import Segmenter

    with Segmenter() as seg:                      # default model hiera_tiny, SAM2SERVE_* env
        result = seg.segment_image("photo.jpg", points=[(320, 240)])
        result.save_annotated("annotated.png")

It runs the very `ImageService` the HTTP server runs (same validation, cache, runtime and
post-processing) on a private asyncio loop in a background thread, and exposes blocking
methods that take the same arguments and return the same result types as `Sam2Client`.
Images are decoded here and their pixels handed straight to the service (no encoding, no
JSON); only URLs go through the service's fetcher, under the server's URL policy.
Errors are the client's typed errors (`BadRequestError`, `UnavailableError`, ...).
Methods are thread-safe: calls from several threads are served by the service's lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from pydantic import ValidationError

from sam2serve.client.calls import CallBuilder, SegmentCall
from sam2serve.client.concept import ConceptResult
from sam2serve.client.errors import error_for_status
from sam2serve.client.everything import (
    EverythingCall,
    EverythingResult,
    everything_body,
    everything_path,
    is_sam3_model,
)
from sam2serve.client.image_encode import (
    ImageLike,
    is_url,
    load_rgb,
    read_image_file,
    with_png_mode,
)
from sam2serve.client.options import SegmentOptions
from sam2serve.client.results import EmbedResult, SegmentResult
from sam2serve.client.video_calls import VideoLike
from sam2serve.config import Settings
from sam2serve.errors import ServiceError, Unavailable
from sam2serve.image.schema import EmbedRequest, LocalEmbedRequest, SegmentRequest
from sam2serve.image.service import ImageService
from sam2serve.local import sam3 as local_sam3
from sam2serve.local.bodies import service_body
from sam2serve.local.video import LocalVideoSession, open_local_session
from sam2serve.media import decode as image_decode
from sam2serve.media.decode import LoadedImage
from sam2serve.registry import ModelSpec
from sam2serve.wire import BinaryResult, Limits, schema_error
from sam2serve.wiring import PUBLIC_NAMESPACE, Services, build_services

__all__ = ["Segmenter"]

T = TypeVar("T")


class Segmenter:
    """A local SAM2 model behind the SDK's `embed_image` / `segment_image`.

    Args:
        model: default model id or alias (``hiera_tiny``, ``sam2.1_hiera_large``, ...);
            None = `Settings.default_model` (env ``SAM2SERVE_DEFAULT_MODEL``, else hiera_tiny).
        weights_dir: checkpoints directory (env ``SAM2SERVE_WEIGHTS_DIR``).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        allow_download: fetch a missing checkpoint from Meta's URL on first use.
        settings: a full `Settings` (the arguments above override its fields).
        registry: model registry (tests add a tiny architecture).

    The model loads lazily on the first call (or call `load()`); embeddings are cached in
    memory by image content, so `segment_image(image_id=...)` works after `embed_image`.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        weights_dir: str | Path | None = None,
        device: str | None = None,
        allow_download: bool | None = None,
        settings: Settings | None = None,
        registry: dict[str, ModelSpec] | None = None,
    ) -> None:
        overrides = {
            k: v
            for k, v in {
                "default_model": model,
                "weights_dir": Path(weights_dir).expanduser() if weights_dir is not None else None,
                "device": device,
                "allow_download": allow_download,
            }.items()
            if v is not None
        }
        if settings is None:
            settings = Settings(**overrides)
        elif overrides:
            settings = settings.model_copy(update=overrides)
        self.settings = settings
        self._limits = Limits(
            settings.max_prompts, settings.max_points_per_prompt, settings.max_coordinate
        )
        self._calls = CallBuilder()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sam2serve-segmenter", daemon=True
        )
        self._thread.start()
        self._caller = LoopCaller(self._loop, self._thread, self._limits)
        self._services: Services = self._run(_build(settings, registry))
        self._service: ImageService = self._services.images
        self._finalizer = weakref.finalize(
            self, _shutdown, self._loop, self._thread, self._services
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop the background loop and free the model. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def model_id(self, model: str | None = None) -> str:
        """The registry id a model name resolves to (BadRequestError for unknown ones)."""
        try:
            return self._service.spec_for(model).model_id
        except ServiceError as exc:
            raise _client_error(exc) from exc

    def load(self, model: str | None = None) -> str:
        """Load a model now (default: the default model) and return its id. Raises
        UnavailableError when its weights are missing and cannot be downloaded."""

        async def go() -> str:
            spec = self._service.spec_for(model)
            await self._service.pool.get(spec)
            return spec.model_id

        return self._caller.call(go())

    # -- the SDK calls ---------------------------------------------------------------

    def embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """See `Sam2Client.embed_image`; the id defaults to the image's content hash."""
        if isinstance(image, str) and is_url(image):  # fetched by the service, as a server does
            body, size = self._calls.embed_body(image, image_id, model, bgr)
            request: EmbedRequest | LocalEmbedRequest = self._caller.validate(EmbedRequest, body)
            pixels = None
        else:
            fields = {"image_id": image_id, "sam2_version_id": model}
            request = self._caller.validate(LocalEmbedRequest, fields)
            self.model_id(model)  # an unknown model is reported before the image is decoded
            pixels = self._pixels(image, bgr)
            size = pixels.hw
        service = self._service
        response = self._caller.call(service.embed(request, PUBLIC_NAMESPACE, pixels=pixels))
        return self._calls.embedded(EmbedResult(response.image_id, response.time), size)

    def segment_image(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        *,
        options: SegmentOptions | None = None,
        bgr: bool = False,
        **fields: Any,
    ) -> SegmentResult:
        """See `Sam2Client.segment_image` (same arguments, same result)."""
        request_body, prompt_list = SegmentOptions.of(options, **fields).body()
        if image_id is not None:
            request_body["image_id"] = image_id
        body, pixels = service_body(request_body, image, image_id, bgr, self._pixels)
        size = pixels.hw if pixels is not None else self._calls.size_of(image_id)
        call = SegmentCall(request_body, size, prompt_list, image, bgr)
        request = self._caller.validate(SegmentRequest, body)
        answer = self._caller.call(self._service.segment(request, PUBLIC_NAMESPACE, pixels=pixels))
        if isinstance(answer, BinaryResult):
            return call.parse(answer.content)
        return call.parse(answer.model_dump(mode="json"))

    def segment_everything(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
        **params: Any,
    ) -> EverythingResult:
        """See `Sam2Client.segment_everything` (same arguments, same result; a SAM 3
        `model` runs it on this process's SAM 3 model)."""
        from sam2serve.everything.schema import EverythingRequest
        from sam2serve.sam3.schema import Sam3EverythingRequest

        # one algorithm, two families: SAM 3's runs on its service (its own model ids,
        # features and caps), SAM 2's on the everything use case
        if is_sam3_model(model):
            sam3 = self._services.sam3
            kind: type[Any] = Sam3EverythingRequest
            run: Any = sam3.segment_everything
            context: dict[str, Any] | None = {"sam3_limits": sam3.limits}
            check: Callable[[], object] = partial(local_sam3.check_model, self, model)
        else:
            kind, run, context = EverythingRequest, self._services.everything.segment, None
            check = partial(self.model_id, model)
        request_body = everything_body(image_id, model, params)
        body, pixels = service_body(request_body, image, image_id, bgr, self._pixels, check)
        request = self._caller.validate(kind, body, context)
        answer = self._caller.call(run(request, PUBLIC_NAMESPACE, pixels=pixels))
        call = EverythingCall(everything_path(model), request_body, image, bgr)
        return call.parse(answer.model_dump(mode="json"))

    def load_sam3(self, model: str | None = None) -> str:
        """Load a SAM 3 model now (default: SAM2SERVE_SAM3_MODEL) and return its id.
        Raises UnavailableError when its (gated) weights file is missing."""
        return local_sam3.load(self, model)

    def sam3_embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """See `Sam2Client.sam3_embed_image`; the id defaults to the image's content hash."""
        return local_sam3.embed(self, image, image_id, model, bgr)

    def concept_segment(
        self, image: ImageLike | None = None, image_id: str | None = None, **kwargs: Any
    ) -> ConceptResult:
        """See `Sam2Client.concept_segment` (same arguments, same result)."""
        return local_sam3.concept_segment(self, image, image_id, **kwargs)

    def video_session(self, video: VideoLike, *, model: str | None = None) -> LocalVideoSession:
        """Open a video session on this model (see `sam2serve.local.video`): a clip
        path/bytes, an https URL, or a list of frames; the HTTP session's methods and results.
        Use it as a context manager (or `close()` it)."""
        return open_local_session(self._caller, self._services.video, video, model)

    def _pixels(self, image: ImageLike, bgr: bool) -> LoadedImage:
        """Decode an image here, as the server decodes an upload (EXIF orientation, every
        pixel mode to RGB, the pixel cap); arrays and PIL images are used as they are."""
        cap = self.settings.max_image_pixels
        try:
            if isinstance(image, np.ndarray):
                return image_decode.from_rgb(load_rgb(image, bgr=bgr), max_pixels=cap)
            if isinstance(image, Image.Image):
                return image_decode.from_rgb(
                    image_decode.pil_to_rgb(with_png_mode(image)), max_pixels=cap
                )
            if isinstance(image, (bytes, bytearray, memoryview)):
                return image_decode.decode_image_bytes(bytes(image), max_pixels=cap)
            if isinstance(image, (str, os.PathLike)):
                return image_decode.decode_image_bytes(read_image_file(image), max_pixels=cap)
        except ServiceError as exc:
            raise _client_error(exc) from exc
        raise TypeError(
            f"image must be a path, bytes, PIL image, numpy array or http(s) URL, "
            f"got {type(image).__name__}"
        )

    # -- plumbing --------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._caller.run(coro)


class LoopCaller:
    """A `Segmenter`'s way to its loop: validates request bodies under its limits and runs
    coroutines on its loop, with the SDK's typed errors. The Segmenter's calls go through it,
    and it is what its video sessions get (a `sam2serve.local.video.LocalCaller`)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, limits: Limits
    ) -> None:
        self._loop = loop
        self._thread = thread
        self._limits = limits

    def validate(
        self, model: type[T], body: dict[str, Any], context: dict[str, Any] | None = None
    ) -> T:
        """`body` parsed by the wire model `model` (`context`: more validation context, e.g.
        SAM 3's caps); InvalidRequestError/BadRequestError."""
        try:
            full = {"limits": self._limits, **(context or {})}
            return model.model_validate(body, context=full)  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise _client_error(schema_error(exc)) from exc

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """`run`, a `ServiceError` raised as the SDK's typed error."""
        try:
            return self.run(coro)
        except ServiceError as exc:
            raise _client_error(exc) from exc

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for it (RuntimeError once the Segmenter is closed)."""
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("this Segmenter is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def _build(settings: Settings, registry: dict[str, ModelSpec] | None) -> Services:
    return build_services(settings, registry)  # built on the loop that will run them


def _client_error(exc: ServiceError) -> Exception:
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
    return error_for_status(
        exc.status, exc.message, field=exc.field, body=exc.to_dict(), retry_after=retry_after
    )


def _shutdown(
    loop: asyncio.AbstractEventLoop,
    thread: threading.Thread,
    services: Services,
) -> None:
    if not thread.is_alive():
        return
    with contextlib.suppress(Exception):  # best effort: never raise from a finalizer
        asyncio.run_coroutine_threadsafe(services.aclose(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if not thread.is_alive():
        loop.close()
