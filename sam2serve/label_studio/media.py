"""Task media: a Label Studio task's image or video reference -> bytes, safely.

References Label Studio puts in task data, and where they are fetched from:
- `/data/upload/...`, `/data/local-files/?d=...`, `/storage-data/uploaded/?filepath=...`,
  and links Label Studio already resolved (`/tasks/<id>/resolve/...`, `/projects/<id>/...`):
  the configured Label Studio (SAM2SERVE_LABEL_STUDIO_URL), with its token;
- `s3://`, `gs://`, `azure-blob://`: Label Studio's resolver for the task
  (`/tasks/<id>/resolve/?fileuri=<base64>`), which proxies the file or redirects to a
  presigned storage URL (that hop gets the ordinary URL policy and no token);
- `http(s)://` on the Label Studio origin: with its token; any other URL: the ordinary URL
  policy (SSRF guard, https only unless url_allow_http), no token;
- `data:...;base64,...`: decoded in place.
The token goes only to the configured origin (`media.fetch.TrustedOrigin`); no answer,
error or log line contains it.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
from pydantic import SecretStr

from sam2serve.config import Settings
from sam2serve.errors import BadRequest, Unavailable
from sam2serve.media.fetch import ByteCap, TrustedOrigin, UrlFetcher

CLOUD_PREFIXES = ("s3:", "gs:", "azure-blob:")
#: paths Label Studio serves (uploads, local files, its storage proxy and resolvers)
LS_RELATIVE = (
    "/data/", "/storage-data/", "data/upload/", "upload/", "/upload/", "/tasks/", "/projects/",
)  # fmt: skip
URL_SETTING = "SAM2SERVE_LABEL_STUDIO_URL"
KEY_SETTING = "SAM2SERVE_LABEL_STUDIO_API_KEY"


def _jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT-shaped token (not verified: only to know when to refresh),
    or None when `token` is not a JWT (a legacy Label Studio token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) else 0.0


class LabelStudioMedia:
    """Fetches task media; one per process (it shares the image service's `UrlFetcher`)."""

    def __init__(self, settings: Settings, fetcher: UrlFetcher) -> None:
        self.fetcher = fetcher
        self.base = (settings.label_studio_url or "").rstrip("/") or None
        self._key: SecretStr | None = settings.label_studio_api_key
        self._access: tuple[str, float] | None = None  # (access token, expiry) for PATs
        self._timeout_s = settings.url_timeout_s
        if self.base is not None:
            try:
                TrustedOrigin.parse(self.base)
            except ValueError as exc:
                raise ValueError(f"{URL_SETTING}: {exc}") from exc

    def is_label_studio(self, reference: str) -> bool:
        return reference.startswith(LS_RELATIVE) or reference.startswith(CLOUD_PREFIXES)

    def resolve(self, reference: str, task_id: int | None, field: str) -> str:
        """The absolute URL to GET for a task data value (see the module docstring)."""
        ref = reference.strip()
        if ref.startswith(("http://", "https://")):
            return ref
        if not self.is_label_studio(ref):
            raise BadRequest(
                f"{field}: {ref[:80]!r} is not a URL sam2serve can fetch (http(s)://, "
                "/data/upload/..., /data/local-files/?d=..., s3://, gs://, azure-blob://)",
                field=field,
            )
        if self.base is None:  # the server's configuration, not the caller's fault
            raise Unavailable(
                f"{field}: the task's media is stored in Label Studio; set {URL_SETTING} (and "
                f"{KEY_SETTING}) on the sam2serve server so it can fetch it",
                field=field,
            )
        if ref.startswith(CLOUD_PREFIXES):
            if task_id is None:
                raise BadRequest(f"{field}: a cloud storage link needs the task's id", field=field)
            fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
            return f"{self.base}/tasks/{int(task_id)}/resolve/?fileuri={fileuri}"
        if ref.startswith(("upload/", "/upload/", "data/upload/")):
            ref = "/data/" + ref.lstrip("/").removeprefix("data/")
        return self.base + "/" + ref.lstrip("/")

    async def fetch(
        self, reference: str, task_id: int | None, *, cap: ByteCap, field: str
    ) -> bytes:
        """The bytes behind a task data value. Raises BadRequest / PayloadTooLarge naming
        `field` (never the token)."""
        url = self.resolve(reference, task_id, field)
        origin = None
        if self.base is not None:  # Label Studio's file views refuse `Accept: image/*` (406)
            headers = {"Accept": "*/*", **await self._auth_headers()}
            origin = TrustedOrigin.parse(self.base, headers)
        return await self.fetcher.fetch(url, cap=cap, field=field, origin=origin)

    async def _auth_headers(self) -> dict[str, str]:
        if self._key is None:
            return {}
        key = self._key.get_secret_value()
        if _jwt_expiry(key) is None:
            return {"Authorization": f"Token {key}"}
        # a personal access token is a JWT refresh token: Label Studio takes the short-lived
        # access token it is exchanged for
        if self._access is None or self._access[1] < time.time() + 30:
            self._access = await self._refresh(key)
        return {"Authorization": f"Bearer {self._access[0]}"}

    async def _refresh(self, refresh: str) -> tuple[str, float]:
        assert self.base is not None
        try:  # the configured origin only, no redirects followed
            async with httpx.AsyncClient(timeout=self._timeout_s, trust_env=False) as client:
                r = await client.post(f"{self.base}/api/token/refresh", json={"refresh": refresh})
            access = r.json().get("access") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            access = None
        if not isinstance(access, str):
            raise Unavailable(
                f"Label Studio at {self.base} did not accept {KEY_SETTING} (a personal access "
                "token is exchanged at /api/token/refresh): check the token",
                field="label_studio_api_key",
            )
        return access, _jwt_expiry(access) or time.time() + 60
