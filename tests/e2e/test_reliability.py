"""Reliability battery against a real server process (the CLI's runner, tiny model, torch).

- a table of malformed requests: each answered 4xx JSON with a message, the same process
  alive afterwards, RSS growth bounded;
- malformed HTTP sent on a raw socket: JSON 400 from the server itself;
- schemathesis against /openapi.json: no server errors, answers as documented;
- metrics reconcile exactly with the client's ledger of statuses per route.

Overload, disconnects and shutdown are in test_reliability_load.py. Figures go to
docs/reliability.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers_reliability import (
    Ledger,
    Server,
    png_b64,
    png_header_b64,
    raw_request,
    reliability_server,
    scrape_requests,
)
from tests.helpers_sam3 import link_weights

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(600)]

SEG, EMB = "/sam2/segment_image", "/sam2/embed_image"
SMALL = png_b64(64, 48)
MAX_BODY = 2 * 1024 * 1024


def _deep(open_: str, close: str, depth: int, inner: str = "1") -> bytes:
    return (open_ * depth + inner + close * depth).encode()


def _j(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _img(value: str, kind: str = "base64") -> dict:
    return {"type": kind, "value": value}


def _seg(**fields: object) -> bytes:
    return _j({"image_id": "known", **fields})


# (name, method, path, body, extra headers)
MALFORMED: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
    # -- JSON that cannot be parsed ------------------------------------------------------
    ("int-5001-digits", "POST", SEG, b'{"image_id": ' + b"9" * 5001 + b"}", {}),
    ("neg-int-5001-digits", "POST", EMB, b'{"x": -' + b"7" * 5001 + b"}", {}),
    ("nesting-5000-arrays", "POST", SEG, _deep("[", "]", 5000), {}),
    ("nesting-5000-objects", "POST", EMB, _deep('{"a":', "}", 5000), {}),
    ("nesting-100k-arrays", "POST", SEG, _deep("[", "]", 100_000), {}),
    ("bad-utf8", "POST", SEG, b'{"image_id": "\xff\xfe"}', {}),
    ("overlong-utf8", "POST", EMB, b'{"image_id": "\xc0\xaf"}', {}),
    ("truncated-json", "POST", SEG, b'{"image_id": "x"', {}),
    ("empty-body", "POST", SEG, b"", {}),
    ("whitespace-body", "POST", EMB, b"   \n ", {}),
    ("trailing-garbage", "POST", SEG, b'{"image_id": "x"} xyz', {}),
    ("single-quotes", "POST", SEG, b"{'image_id': 'x'}", {}),
    ("trailing-comma", "POST", SEG, b'{"image_id": "x",}', {}),
    ("comment", "POST", SEG, b'{"image_id": "x" /* hi */}', {}),
    (
        "form-encoded",
        "POST",
        EMB,
        b"image=abc&image_id=x",
        {"content-type": "application/x-www-form-urlencoded"},
    ),
    ("nul-bytes", "POST", SEG, b"\x00" * 64, {}),
    ("utf16-no-bom-garbage", "POST", SEG, '{"image_id": 1'.encode("utf-16-le"), {}),
    # -- JSON of the wrong shape ---------------------------------------------------------
    ("null", "POST", SEG, b"null", {}),
    ("array", "POST", EMB, b"[1, 2]", {}),
    ("string", "POST", SEG, b'"just a string"', {}),
    ("number", "POST", EMB, b"123", {}),
    ("bool", "POST", SEG, b"true", {}),
    ("empty-object-seg", "POST", SEG, b"{}", {}),
    ("empty-object-embed", "POST", EMB, b"{}", {}),
    (
        "nan-coordinate",
        "POST",
        SEG,
        b'{"image_id": "known", "prompts": [{"points": [{"x": NaN, "y": 1}]}]}',
        {},
    ),
    (
        "infinity-coordinate",
        "POST",
        SEG,
        b'{"image_id": "known", "prompts": [{"points": [{"x": Infinity, "y": 1}]}]}',
        {},
    ),
    (
        "1e999-coordinate",
        "POST",
        SEG,
        b'{"image_id": "known", "prompts": [{"points": [{"x": 1e999, "y": 1}]}]}',
        {},
    ),
    ("huge-coordinate", "POST", SEG, _seg(prompts=[{"points": [{"x": 1e300, "y": 1}]}]), {}),
    ("coordinate-string", "POST", SEG, _seg(prompts=[{"points": [{"x": "abc", "y": 1}]}]), {}),
    ("point-missing-y", "POST", SEG, _seg(prompts=[{"points": [{"x": 1}]}]), {}),
    (
        "box-negative-width",
        "POST",
        SEG,
        _seg(prompts=[{"box": {"x": 1, "y": 1, "width": -5, "height": 3}}]),
        {},
    ),
    ("box-as-list", "POST", SEG, _seg(prompts=[{"box": [1, 2, 3, 4]}]), {}),
    ("prompts-number", "POST", SEG, _seg(prompts=5), {}),
    ("too-many-prompts", "POST", SEG, _seg(prompts=[{"points": [{"x": 1, "y": 1}]}] * 10_000), {}),
    ("too-many-points", "POST", SEG, _seg(prompts=[{"points": [{"x": 1, "y": 1}] * 10_000}]), {}),
    ("format-xml", "POST", SEG, _seg(format="xml"), {}),
    ("multimask-maybe", "POST", SEG, _seg(multimask_output="maybe"), {}),
    ("mask-input-string", "POST", SEG, _seg(mask_input="abc"), {}),
    (
        "mask-input-wrong-shape",
        "POST",
        SEG,
        _seg(prompts=[{"points": [{"x": 1, "y": 1}]}], mask_input=[[1.0, 2.0]]),
        {},
    ),
    (
        "mask-input-ragged",
        "POST",
        SEG,
        _seg(prompts=[{"points": [{"x": 1, "y": 1}]}], mask_input=[[1.0], [1.0, 2.0]]),
        {},
    ),
    (
        "mask-input-900-deep",
        "POST",
        SEG,
        b'{"image_id": "known", "prompts": [{"points": [{"x": 1, "y": 1}]}], "mask_input": '
        + _deep("[", "]", 900)
        + b"}",
        {},
    ),
    (
        "mask-input-nan",
        "POST",
        SEG,
        b'{"image_id": "known", "prompts": [{"points": [{"x": 1, "y": 1}]}], '
        b'"mask_input": [[[NaN]]]}',
        {},
    ),
    ("image-id-too-long", "POST", SEG, _j({"image_id": "a" * 200}), {}),
    ("image-id-slash", "POST", SEG, _j({"image_id": "../../etc/passwd"}), {}),
    ("image-id-number", "POST", SEG, _j({"image_id": 12345}), {}),
    ("image-id-1mb", "POST", SEG, _j({"image_id": "a" * 1_000_000}), {}),
    ("image-id-lone-surrogate", "POST", SEG, b'{"image_id": "\\ud800"}', {}),
    ("api-key-lone-surrogate", "POST", SEG, b'{"image_id": "nope", "api_key": "\\udfff"}', {}),
    ("image-id-unknown", "POST", SEG, _j({"image_id": "never-embedded"}), {}),
    ("model-unknown", "POST", SEG, _j({"image_id": "known", "sam2_version_id": "gpt-5"}), {}),
    (
        "model-10k-chars",
        "POST",
        EMB,
        _j({"image": _img(SMALL), "sam2_version_id": "m" * 10_000}),
        {},
    ),
    # -- images that cannot be used ------------------------------------------------------
    ("image-type-numpy", "POST", EMB, _j({"image": _img("gASV", "numpy")}), {}),
    ("image-type-pickle", "POST", SEG, _j({"image": _img("gASV", "pickle")}), {}),
    ("image-type-int", "POST", EMB, _j({"image": {"type": 5, "value": SMALL}}), {}),
    ("image-as-string", "POST", EMB, _j({"image": SMALL}), {}),
    ("image-missing-value", "POST", EMB, _j({"image": {"type": "base64"}}), {}),
    ("base64-not-alphabet", "POST", EMB, _j({"image": _img("!!!!$$$$")}), {}),
    ("base64-bad-length", "POST", EMB, _j({"image": _img("abcde")}), {}),
    ("base64-empty", "POST", EMB, _j({"image": _img("")}), {}),
    ("base64-of-text", "POST", EMB, _j({"image": _img("aGVsbG8gd29ybGQ=")}), {}),
    ("base64-data-uri-not-b64", "POST", EMB, _j({"image": _img("data:image/png,abc")}), {}),
    ("png-truncated", "POST", EMB, _j({"image": _img(SMALL[: len(SMALL) // 2 // 4 * 4])}), {}),
    ("png-header-only", "POST", EMB, _j({"image": _img(png_header_b64(64, 64))}), {}),
    (
        "png-bomb-100k-square",
        "POST",
        EMB,
        _j({"image": _img(png_header_b64(100_000, 100_000))}),
        {},
    ),
    ("png-zero-size", "POST", EMB, _j({"image": _img(png_header_b64(0, 10))}), {}),
    (
        "gif",
        "POST",
        EMB,
        _j({"image": _img("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")}),
        {},
    ),
    (
        "svg",
        "POST",
        EMB,
        _j({"image": _img("PHN2ZyB4bWxucz0naHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmcnLz4=")}),
        {},
    ),
    ("url-http", "POST", EMB, _j({"image": _img("http://example.com/a.png", "url")}), {}),
    ("url-loopback", "POST", EMB, _j({"image": _img("https://127.0.0.1/a.png", "url")}), {}),
    ("url-file", "POST", SEG, _j({"image": _img("file:///etc/passwd", "url")}), {}),
    ("url-garbage", "POST", EMB, _j({"image": _img("ht!tp:://", "url")}), {}),
    ("body-over-cap", "POST", EMB, _j({"image": _img("A" * (MAX_BODY + 10))}), {}),
    # -- routes and methods --------------------------------------------------------------
    ("get-on-post-route", "GET", SEG, None, {}),
    ("put-on-healthz", "PUT", "/healthz", b"", {}),
    ("delete-info", "DELETE", "/info", None, {}),
    ("post-metrics", "POST", "/metrics", b"{}", {}),
    ("unknown-path", "GET", "/sam2/nothing", None, {}),
    ("static-traversal", "GET", "/static/..%2f..%2fpyproject.toml", None, {}),
    ("static-missing", "GET", "/static/nope.js", None, {}),
    ("long-unknown-path", "GET", "/" + "x" * 8000, None, {}),
]

# malformed HTTP: answered by the server's protocol layer, before the app
RAW: list[tuple[str, bytes]] = [
    (
        "content-length-letters",
        b"POST /sam2/embed_image HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ),
    (
        "content-length-negative",
        b"POST /sam2/embed_image HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ),
    (
        "content-length-twice",
        b"POST /sam2/embed_image HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "te-and-cl",
        b"POST /sam2/embed_image HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ),
    (
        "bad-chunk",
        b"POST /sam2/embed_image HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    ),
    ("garbage-request-line", b"HELLO WORLD\r\n\r\n"),
    ("header-without-colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n"),
    ("bad-http-version", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"),
]


@pytest.fixture(scope="module")
def server(
    tiny_weights_dir: Path, sam3_tiny_weights_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    # segment_everything: generated grids over 256 points are refused (413) before any
    # work, so the fuzzer's largest parameters cannot make it a long run. The fuzzer opens
    # video sessions (the documented example works) and never closes them; the session cap's
    # 503 is tested on its own (test_video_api), so it is out of reach here.
    # both families' tiny checkpoints: the fuzzer sends the /sam3 examples' model ids too
    weights = link_weights(
        tmp_path_factory.mktemp("weights-both"), tiny_weights_dir, sam3_tiny_weights_dir
    )
    with reliability_server(
        weights,
        SAM2SERVE_MAX_BODY_BYTES=str(MAX_BODY),
        SAM2SERVE_EVERYTHING_MAX_POINTS="256",
        SAM2SERVE_VIDEO_MAX_SESSIONS="100000",
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def known_image(server: Server, ledger: Ledger) -> str:
    with ledger.client(server.url) as c:
        r = c.post(EMB, json={"image": _img(SMALL), "image_id": "known"})
    assert r.status_code == 200, r.text
    return "known"


def _send(
    c: httpx.Client, method: str, path: str, body: bytes | None, headers: dict
) -> httpx.Response:
    hdrs = {"content-type": "application/json", **headers} if body is not None else headers
    return c.request(method, path, content=body, headers=hdrs)


def test_malformed_table_size() -> None:
    assert len(MALFORMED) + len(RAW) >= 60
    assert len({name for name, *_ in MALFORMED}) == len(MALFORMED)


def test_malformed_requests_get_4xx_json_and_the_server_stays(
    server: Server, ledger: Ledger, known_image: str
) -> None:
    pid = server.proc.pid
    rss = []
    statuses: Counter = Counter()
    with ledger.client(server.url) as c:
        for round_ in range(3):  # RSS after round 1 vs round 3: no growth per request
            for name, method, path, body, headers in MALFORMED:
                r = _send(c, method, path, body, headers)
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
                data = r.json()
                assert isinstance(data.get("message"), str) and data["message"], (name, data)
                assert r.headers.get("x-request-id"), name
                if round_ == 0:
                    statuses[r.status_code] += 1
            rss.append(server.rss_bytes())
    assert server.proc.poll() is None and server.proc.pid == pid
    assert httpx.get(server.url + "/healthz").status_code == 200
    growth = rss[-1] - rss[0]
    print(f"malformed: {len(MALFORMED)} kinds x3, statuses {dict(statuses)}, RSS {rss}")
    assert growth < 64 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB over 2 rounds"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(("name", "raw"), RAW, ids=[n for n, _ in RAW])
def test_malformed_http_gets_json_400(server: Server, name: str, raw: bytes) -> None:
    answer = raw_request(server.url, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 4"), (name, answer[:300])
    assert b"application/json" in head.lower(), (name, head)
    assert json.loads(body)["message"], name
    assert server.proc.poll() is None


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server: Server, tmp_path: Path
) -> None:
    """Every operation of /openapi.json, fuzzed (bounded examples, fixed seed)."""
    cli = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance"
    )
    proc = subprocess.run(
        [
            cli,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            checks,
            "--max-examples",
            "15",
            "--seed",
            "1",
            "--no-shrink",
            "--request-timeout",
            "60",
            "--phases",
            "examples,coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=tmp_path,
    )
    tail = proc.stdout[-4000:]
    print(tail)
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    assert server.proc.poll() is None


def test_metrics_reconcile_with_the_client_ledger(server: Server, known_image: str) -> None:
    """Every answer the client got is counted once, under its route and status."""
    ledger = Ledger()
    before = scrape_requests(server.url)
    ledger.counts[("/metrics", "200")] += 1  # the scrape above, counted after it answered
    with ledger.client(server.url) as c:
        for _name, method, path, body, headers in MALFORMED:
            _send(c, method, path, body, headers)
        c.get("/healthz")
        c.get("/readyz")
        c.get("/info")
        c.get("/")
        c.get("/static/app.js")
        c.post(SEG, json={"image_id": known_image, "prompts": [{"points": [{"x": 5, "y": 5}]}]})
        c.post(EMB, json={"image": _img(png_b64(40, 30, seed=3))})
    after = scrape_requests(server.url)
    delta = Counter({k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)})
    assert delta == ledger.counts
    print(
        f"ledger: {sum(ledger.counts.values())} answers over {len(ledger.counts)} (route, status)"
    )
