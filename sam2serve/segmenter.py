"""In-process SAM2: the SDK's embed/segment calls on a local model, no server, no HTTP.

    from sam2serve import Segmenter

    with Segmenter() as seg:                      # default model hiera_tiny, SAM2SERVE_* env
        result = seg.segment_image("photo.jpg", points=[(320, 240)])
        result.save_annotated("annotated.png")

It runs the very `Sam2Service` the HTTP server runs (same validation, cache, runtime and
post-processing) on a private asyncio loop in a background thread, and exposes blocking
methods that take the same arguments and return the same result types as `Sam2Client`.
Errors are the client's typed errors (`BadRequestError`, `UnavailableError`, ...).
Methods are thread-safe: calls from several threads are served by the service's lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from sam2serve.api.auth import PUBLIC_NAMESPACE
from sam2serve.api.body import schema_error
from sam2serve.api.requests import EmbedRequest, Limits, SegmentRequest
from sam2serve.client.calls import CallBuilder, embed_result
from sam2serve.client.errors import error_for_status
from sam2serve.client.everything import EverythingResult, everything_call
from sam2serve.client.images import ImageLike
from sam2serve.client.results import EmbedResult, SegmentResult
from sam2serve.config import Settings
from sam2serve.errors import ServiceError, Unavailable
from sam2serve.registry import ModelSpec
from sam2serve.service import BinaryResult, Sam2Service

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
        self._service: Sam2Service = self._run(_build(settings, registry))
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread, self._service)

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

        return self._call(go())

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
        body, size = self._calls.embed_body(image, image_id, model, bgr)
        request = self._validate(EmbedRequest, body)
        response = self._call(self._service.embed(request, PUBLIC_NAMESPACE))
        return self._calls.embedded(embed_result(response.model_dump(mode="json")), size)

    def segment_image(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        prompts: Any = None,
        points: Any = None,
        boxes: Any = None,
        multimask_output: bool = True,
        format: str = "rle",
        model: str | None = None,
        *,
        bgr: bool = False,
        mask_input: Any = None,
        save_logits_to_cache: bool = False,
        load_logits_from_cache: bool = False,
        polygon_holes: bool = False,
    ) -> SegmentResult:
        """See `Sam2Client.segment_image` (same arguments, same result)."""
        call = self._calls.segment_call(
            image, image_id, prompts, points, boxes, multimask_output, format, model, bgr,
            mask_input, save_logits_to_cache, load_logits_from_cache, polygon_holes,
        )  # fmt: skip
        request = self._validate(SegmentRequest, call.body)
        answer = self._call(self._service.segment(request, PUBLIC_NAMESPACE))
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
        """See `Sam2Client.segment_everything` (same arguments, same result)."""
        from sam2serve.everything_schema import EverythingRequest
        from sam2serve.everything_service import segment_everything

        call = everything_call(image, image_id, model, bgr, params)
        request = self._validate(EverythingRequest, call.body)
        answer = self._call(segment_everything(self._service, request, PUBLIC_NAMESPACE))
        return call.parse(answer.model_dump(mode="json"))  # type: ignore[union-attr]

    # -- plumbing --------------------------------------------------------------------

    def _validate(self, model: type[T], body: dict[str, Any]) -> T:
        try:
            return model.model_validate(body, context={"limits": self._limits})  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise _client_error(schema_error(exc)) from exc

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return self._run(coro)
        except ServiceError as exc:
            raise _client_error(exc) from exc

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("this Segmenter is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


async def _build(settings: Settings, registry: dict[str, ModelSpec] | None) -> Sam2Service:
    from sam2serve.api.app import build_service

    return build_service(settings, registry)  # built on the loop that will run it


def _client_error(exc: ServiceError) -> Exception:
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else None
    return error_for_status(
        exc.status, exc.message, field=exc.field, body=exc.to_dict(), retry_after=retry_after
    )


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread, service: Any) -> None:
    if not thread.is_alive():
        return
    with contextlib.suppress(Exception):  # best effort: never raise from a finalizer
        asyncio.run_coroutine_threadsafe(service.aclose(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    if not thread.is_alive():
        loop.close()
