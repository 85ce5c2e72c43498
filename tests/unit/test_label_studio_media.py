"""Task media from Label Studio: which URL each kind of reference becomes, the token sent to
the configured Label Studio origin only (not to a presigned-URL redirect, not to other
hosts), that origin allowed on a private address while the SSRF guard stays on for every
other URL, and the token never in an error, a repr or a log line."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httpx
import pytest

from sam2serve.config import Settings
from sam2serve.errors import ServiceError
from sam2serve.label_studio.media import LabelStudioMedia
from sam2serve.media.fetch import ByteCap, TrustedOrigin, UrlFetcher
from tests.unit.test_fetch import FakeResolver, Recorder

pytestmark = pytest.mark.timeout(60)

TOKEN = "ls-secret-token-0123456789"
LS = "http://labelstudio.internal:8080"
DNS = {
    "labelstudio.internal": ["10.1.2.3"],
    "bucket.s3.example.test": ["93.184.216.34"],
    "public.example.test": ["93.184.216.34"],
    "intranet.example.test": ["10.9.9.9"],
}


def _media(recorder: Recorder, **settings: Any) -> LabelStudioMedia:
    values: dict[str, Any] = {"label_studio_url": LS, "label_studio_api_key": TOKEN}
    values.update(settings)
    s = Settings(**values)
    fetcher = UrlFetcher(s, resolver=FakeResolver(DNS), transport=httpx.MockTransport(recorder))
    return LabelStudioMedia(s, fetcher)


def _fetch(media: LabelStudioMedia, reference: str, task_id: int | None = 7) -> bytes:
    async def go() -> bytes:
        try:
            return await media.fetch(reference, task_id, cap=ByteCap(1000), field="task.data")
        finally:
            await media.fetcher.aclose()

    return asyncio.run(go())


S3 = "s3://bucket/dir/a.png"
S3_B64 = base64.urlsafe_b64encode(S3.encode()).decode()
GS_B64 = base64.urlsafe_b64encode(b"gs://b/x.jpg").decode()
PROXY = "/storage-data/uploaded/?filepath=upload/3/a.png"

# (task data value, the URL fetched)
RESOLVED = [
    ("/data/upload/3/abc-photo.png", f"{LS}/data/upload/3/abc-photo.png"),
    ("upload/3/abc-photo.png", f"{LS}/data/upload/3/abc-photo.png"),
    ("/data/local-files/?d=images/a.jpg", f"{LS}/data/local-files/?d=images/a.jpg"),
    (PROXY, f"{LS}{PROXY}"),
    (f"/tasks/7/resolve/?fileuri={S3_B64}", f"{LS}/tasks/7/resolve/?fileuri={S3_B64}"),
    (S3, f"{LS}/tasks/7/resolve/?fileuri={S3_B64}"),
    ("gs://b/x.jpg", f"{LS}/tasks/7/resolve/?fileuri={GS_B64}"),
    ("https://public.example.test/x.png", "https://public.example.test/x.png"),
]


@pytest.mark.parametrize(("reference", "url"), RESOLVED)
def test_references_resolve(reference: str, url: str) -> None:
    media = _media(Recorder())
    assert media.resolve(reference, 7, "f") == url


@pytest.mark.parametrize("reference", ["/data/upload/3/a.png", "s3://b/a.png"])
def test_label_studio_media_needs_the_url_setting(reference: str) -> None:
    media = _media(Recorder(), label_studio_url=None)
    with pytest.raises(ServiceError) as exc:
        media.resolve(reference, 7, "tasks[7].data.image")
    assert exc.value.status == 503 and "SAM2SERVE_LABEL_STUDIO_URL" in exc.value.message


def test_token_goes_to_label_studio_only() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.headers["host"] == "labelstudio.internal:8080":  # proxied or presigned
            return httpx.Response(302, headers={"location": "https://bucket.s3.example.test/a"})
        return httpx.Response(200, content=b"pixels")

    recorder = Recorder(respond)
    assert _fetch(_media(recorder), S3) == b"pixels"
    first, second = recorder.requests
    assert first.headers["authorization"] == f"Token {TOKEN}"
    assert str(first.url).startswith("http://10.1.2.3:8080/tasks/7/resolve/")  # pinned address
    assert "authorization" not in second.headers  # the presigned URL's host never sees it
    assert second.headers["host"] == "bucket.s3.example.test"


def test_other_urls_keep_the_ssrf_guard_and_get_no_token() -> None:
    recorder = Recorder()
    assert _fetch(_media(recorder), "https://public.example.test/x.png") == b"img"
    assert "authorization" not in recorder.requests[0].headers
    for url in ("https://intranet.example.test/x.png", "http://public.example.test/x.png"):
        with pytest.raises(ServiceError) as exc:
            _fetch(_media(Recorder()), url)
        assert exc.value.status == 400 and exc.value.field == "task.data"
    # the same Label Studio host on another port is not the trusted origin
    with pytest.raises(ServiceError):
        _fetch(_media(Recorder()), "http://labelstudio.internal:9999/data/upload/1/a.png")


def test_metadata_stays_refused_for_the_trusted_origin() -> None:
    recorder = Recorder()
    media = _media(recorder, label_studio_url="http://169.254.169.254")
    with pytest.raises(ServiceError) as exc:
        _fetch(media, "/data/upload/1/a.png")
    assert "metadata" in exc.value.message and not recorder.requests


def test_token_is_never_echoed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors = []
    for status in (401, 404, 500):
        recorder = Recorder(lambda request, s=status: httpx.Response(s, text=f"bad {TOKEN}"))
        with pytest.raises(ServiceError) as exc:
            _fetch(_media(recorder), "/data/upload/1/a.png")
        errors.append(exc.value)
    settings = Settings(label_studio_url=LS, label_studio_api_key=TOKEN)
    shown = [repr(settings), str(settings.model_dump()), caplog.text]
    shown += [repr(TrustedOrigin.parse(LS, {"Authorization": f"Token {TOKEN}"}))]
    shown += [str(e.to_dict()) for e in errors]
    assert all(TOKEN not in text for text in shown), shown


def test_personal_access_token_is_exchanged() -> None:
    def jwt(claims: str) -> str:
        part = base64.urlsafe_b64encode(claims.encode()).decode().rstrip("=")
        return f"eyJhbGciOiJIUzI1NiJ9.{part}.sig"

    pat, access = jwt('{"exp": 4102444800, "token_type": "refresh"}'), jwt('{"exp": 4102444800}')
    calls: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.path == "/api/token/refresh":
            return httpx.Response(200, json={"access": access})
        return httpx.Response(200, content=b"img")

    transport = httpx.MockTransport(respond)
    media = _media(Recorder(respond), label_studio_api_key=pat)
    original = httpx.AsyncClient

    def client(**kwargs: Any) -> httpx.AsyncClient:
        return original(transport=transport, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx, "AsyncClient", client)
        assert _fetch(media, "/data/upload/1/a.png") == b"img"
    refresh, get = calls
    assert refresh.url.path == "/api/token/refresh" and pat.encode() in refresh.content
    assert get.headers["authorization"] == f"Bearer {access}"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://ls:8080/", "http://ls:8080"),
        (" https://ls.example.test ", "https://ls.example.test"),
        ("", None),
    ],
)
def test_label_studio_url_setting(given: str, kept: str | None) -> None:
    assert Settings(label_studio_url=given).label_studio_url == kept


@pytest.mark.parametrize("bad", ["ls:8080", "ftp://ls", "http://", "label-studio"])
def test_bad_label_studio_url_setting(bad: str) -> None:
    with pytest.raises(ValueError, match="label_studio_url"):
        Settings(label_studio_url=bad)
