"""`Sam2Client` (sync) and `AsyncSam2Client` over httpx, for any server speaking the API.

Auth: the key goes in the ``api_key`` QUERY parameter, as Roboflow's clients send it (works
with sam2serve and with Roboflow's hosted/local servers; sam2serve never logs query strings).

Affinity: embed, segment and segment-everything requests carry the image's id in the
``X-Sam2serve-Image-Id`` header too (see `sam2serve.client.affinity`), so a load balancer can
send an image's requests to one replica; ``affinity_header=False`` leaves it out.

Retries: a 503 or 429 that carries ``Retry-After`` (server busy / model loading / this key
over its share) is retried up to `max_retries` times, waiting what the server asks (capped at
`max_retry_wait` seconds). A 503 without it (e.g. weights missing) and every other error
raise at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from sam2serve.client.affinity import RouteIds, affinity_headers
from sam2serve.client.calls import CallBuilder, embed_result
from sam2serve.client.concept_calls import AsyncConceptCalls, ConceptCalls
from sam2serve.client.errors import error_from_response, parse_retry_after
from sam2serve.client.everything import EverythingResult, everything_call
from sam2serve.client.image_encode import ImageLike
from sam2serve.client.options import SegmentOptions
from sam2serve.client.results import EmbedResult, SegmentResult
from sam2serve.client.transport import AsyncSender, Sender, transport_error
from sam2serve.client.video import (
    AsyncVideoSession,
    VideoSession,
    open_async_session,
    open_session,
)
from sam2serve.client.video_calls import VideoLike

__all__ = ["DEFAULT_BASE_URL", "AsyncSam2Client", "Sam2Client"]

DEFAULT_BASE_URL = "http://127.0.0.1:9001"
EMBED_PATH = "/sam2/embed_image"
SEGMENT_PATH = "/sam2/segment_image"


class _Base:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        max_retry_wait: float,
        affinity_header: bool,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.affinity_header = affinity_header
        self.max_retries = max(0, int(max_retries))
        self.max_retry_wait = float(max_retry_wait)
        self._params = {"api_key": api_key} if api_key else {}
        self._timeout = (
            timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10)
        )
        self._calls = CallBuilder()
        self._route_ids = RouteIds()

    def _route(self, body: dict[str, Any], source: Any = None, bgr: bool = False) -> str | None:
        """The image id for the affinity header of a request with `body` (None: no header)."""
        return self._route_ids(body, source, bgr) if self.affinity_header else None

    def _retry_wait(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None to stop."""
        if response.status_code not in (429, 503) or attempt >= self.max_retries:
            return None
        wait = parse_retry_after(response.headers.get("retry-after"))
        return None if wait is None else min(wait, self.max_retry_wait)

    @staticmethod
    def _answer(response: httpx.Response) -> dict[str, Any] | bytes:
        if not response.is_success:
            raise error_from_response(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        answer = _Base._answer(response)
        if not isinstance(answer, dict):
            raise error_from_response(response)
        return answer


class Sam2Client(ConceptCalls, _Base):
    """Blocking client. Use as a context manager, or call `close()`.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:9001`` or
            ``https://serverless.roboflow.com``.
        api_key: sent as the ``api_key`` query parameter when given.
        timeout: seconds per request (connect: 10 s). The first request on a cold server
            may load (or download) the model: keep it generous.
        max_retries: retries of a 503 that carries Retry-After.
        max_retry_wait: cap, in seconds, on one Retry-After wait.
        transport: an httpx transport (tests use `httpx.MockTransport`).
        resend_on_miss: on a 404 for an id-only `segment_image`, re-send the image this
            client embedded under that id, once (the server evicted it, or a replica lost
            it). Keeps up to 64 MiB of encoded images; False to turn off.
        affinity_header: send the image's id in ``X-Sam2serve-Image-Id`` too, so a load
            balancer can route an image's embed and clicks to one replica (docs/scaling.md).
            An image without an id is decoded once here to compute the server's id (its
            content hash). False: no header, no decode.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 120.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
        resend_on_miss: bool = True,
        affinity_header: bool = True,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, max_retry_wait, affinity_header)
        self.resend_on_miss = resend_on_miss
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self._timeout, transport=transport, headers=headers
        )
        self._sleep: Callable[[float], None] = time.sleep
        self._sender = Sender(self._http, self.base_url, self._params)

    def __enter__(self) -> Sam2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post_resending(self, path: str, call: Any) -> httpx.Response:
        """POST `call`; if the server lost its image_id, send the kept image once more."""
        response = self._post(path, call.body, self._route(call.body, call.source, call.bgr))
        again = self._calls.resend_body(call, response.status_code) if self.resend_on_miss else None
        return self._post(path, again, self._route(again)) if again is not None else response

    def _post(self, path: str, body: dict[str, Any], image_id: str | None) -> httpx.Response:
        """POST `body` (JSON) with `image_id` in the affinity header; retries 503s."""
        headers = affinity_headers(image_id)
        attempt = 0
        while True:
            try:
                response = self._http.post(path, json=body, params=self._params, headers=headers)
            except httpx.TransportError as exc:
                raise transport_error(self.base_url, exc) from exc
            wait = self._retry_wait(response, attempt)
            if wait is None:
                return response
            attempt += 1
            self._sleep(wait)

    def video_session(self, video: VideoLike, *, model: str | None = None) -> VideoSession:
        """Open a video session (see `sam2serve.client.video`): a clip path/bytes, an https
        URL, or a list of frames. Returns a `VideoSession`; use it as a context manager."""
        return open_session(self._sender, video, model=model)

    def embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """Embed an image once; later `segment_image(image_id=...)` calls skip the upload.

        `model` is a sam2_version_id (``hiera_tiny``, ``sam2.1_hiera_large``, ...);
        None = the server's default. `bgr=True` for OpenCV (BGR) arrays.
        """
        return self._embed(EMBED_PATH, "sam2_version_id", image, image_id, model, bgr)

    def _embed(
        self,
        path: str,
        model_field: str,
        image: ImageLike,
        image_id: str | None,
        model: str | None,
        bgr: bool,
    ) -> EmbedResult:
        """POST an embed of either family (`path`, the model under `model_field`); keep the
        image for re-sending on a miss, and its size for polygon answers."""
        body, size = self._calls.embed_body(image, image_id, model, bgr, model_field)
        route = self._route(body, image, bgr)
        result = embed_result(self._json(self._post(path, body, route)))
        if self.resend_on_miss:
            self._calls.keep(result.image_id, body["image"])
        return self._calls.embedded(result, size)

    def segment_image(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        *,
        options: SegmentOptions | None = None,
        bgr: bool = False,
        **fields: Any,
    ) -> SegmentResult:
        """Masks for prompts on an image (or on an embedded `image_id`).

        Args:
            image: path, bytes, PIL image, numpy array (RGB; `bgr=True` for OpenCV) or URL.
            image_id: id from `embed_image` (with no image: segment the cached embedding).
            options: a `SegmentOptions`; keyword `fields` (its field names: ``points``,
                ``boxes``, ``prompts``, ``multimask_output``, ``format``, ``model``,
                ``mask_input``, ``save_logits_to_cache``, ``load_logits_from_cache``,
                ``polygon_holes``) build one, or override those of `options`.
                Boxes are CORNER boxes ``(x1, y1, x2, y2)``; numpy arrays are accepted.
        """
        call = self._calls.segment_call(
            image, image_id, SegmentOptions.of(options, **fields), bgr=bgr
        )
        response = self._post_resending(SEGMENT_PATH, call)
        return call.parse(self._answer(response))

    def segment_everything(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
        **params: Any,
    ) -> EverythingResult:
        """Every object of the image as a mask (Meta's automatic mask generator; `params`
        under its names: points_per_side=32, pred_iou_thresh=0.8, crop_n_layers=0, ...).

        `model`: a SAM 2 id (sam2_version_id; None = the server's default), or a SAM 3 id
        (one that starts with "sam3"; ``"sam3/sam3_final"`` = the server's SAM 3 model) to
        run the same generator on SAM 3's point predictor. `image_id`: an image embedded
        for that family (`embed_image` for SAM 2, `sam3_embed_image` for SAM 3).
        """
        call = everything_call(image, image_id, model, bgr, params)
        response = self._post_resending(call.path, call)
        return call.parse(self._json(response))


class AsyncSam2Client(AsyncConceptCalls, _Base):
    """The asyncio twin of `Sam2Client`: same arguments, `await` the methods."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 120.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
        resend_on_miss: bool = True,
        affinity_header: bool = True,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, max_retry_wait, affinity_header)
        self.resend_on_miss = resend_on_miss
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=self._timeout, transport=transport, headers=headers
        )
        self._sleep: Callable[[float], Any] = asyncio.sleep
        self._sender = AsyncSender(self._http, self.base_url, self._params)

    async def __aenter__(self) -> AsyncSam2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post_resending(self, path: str, call: Any) -> httpx.Response:
        """POST `call`; if the server lost its image_id, send the kept image once more."""
        response = await self._post(path, call.body, self._route(call.body, call.source, call.bgr))
        again = self._calls.resend_body(call, response.status_code) if self.resend_on_miss else None
        return await self._post(path, again, self._route(again)) if again is not None else response

    async def _post(self, path: str, body: dict[str, Any], image_id: str | None) -> httpx.Response:
        """See `Sam2Client._post`."""
        headers = affinity_headers(image_id)
        attempt = 0
        while True:
            try:
                response = await self._http.post(
                    path, json=body, params=self._params, headers=headers
                )
            except httpx.TransportError as exc:
                raise transport_error(self.base_url, exc) from exc
            wait = self._retry_wait(response, attempt)
            if wait is None:
                return response
            attempt += 1
            await self._sleep(wait)

    async def video_session(
        self, video: VideoLike, *, model: str | None = None
    ) -> AsyncVideoSession:
        """See `Sam2Client.video_session`; returns an `AsyncVideoSession` (`async with` it)."""
        return await open_async_session(self._sender, video, model=model)

    async def embed_image(
        self,
        image: ImageLike,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
    ) -> EmbedResult:
        """See `Sam2Client.embed_image`."""
        return await self._embed(EMBED_PATH, "sam2_version_id", image, image_id, model, bgr)

    async def _embed(
        self,
        path: str,
        model_field: str,
        image: ImageLike,
        image_id: str | None,
        model: str | None,
        bgr: bool,
    ) -> EmbedResult:
        """See `Sam2Client._embed`."""
        body, size = self._calls.embed_body(image, image_id, model, bgr, model_field)
        route = self._route(body, image, bgr)
        result = embed_result(self._json(await self._post(path, body, route)))
        if self.resend_on_miss:
            self._calls.keep(result.image_id, body["image"])
        return self._calls.embedded(result, size)

    async def segment_image(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        *,
        options: SegmentOptions | None = None,
        bgr: bool = False,
        **fields: Any,
    ) -> SegmentResult:
        """See `Sam2Client.segment_image`."""
        call = self._calls.segment_call(
            image, image_id, SegmentOptions.of(options, **fields), bgr=bgr
        )
        response = await self._post_resending(SEGMENT_PATH, call)
        return call.parse(self._answer(response))

    async def segment_everything(
        self,
        image: ImageLike | None = None,
        image_id: str | None = None,
        model: str | None = None,
        *,
        bgr: bool = False,
        **params: Any,
    ) -> EverythingResult:
        """See `Sam2Client.segment_everything` (SAM 2 or SAM 3, by `model`)."""
        call = everything_call(image, image_id, model, bgr, params)
        response = await self._post_resending(call.path, call)
        return call.parse(self._json(response))
