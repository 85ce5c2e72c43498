"""Helpers of the browser tests: Debian's chromium driven by Playwright (its own browser
download is not used), the marks every browser test module carries, console-error capture.
The fixtures built on them (`server`, `browser`, `new_context`) are in tests/e2e/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

#: `pytestmark` of a browser test module (`browser` also makes it `slow`: tests/conftest.py)
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


def watch_errors(page: Any) -> list[str]:
    """A list that collects the page's console errors and uncaught exceptions from now on."""
    errors: list[str] = []

    def console(msg: Any) -> None:
        if msg.type == "error":
            errors.append(f"console.error: {msg.text}")

    page.on("console", console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors
