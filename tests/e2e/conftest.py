"""Fixtures of the browser tests: a live threaded server on the tiny random-weight model and
headless chromium (Playwright). A module that needs another server defines its own `server`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_settings
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS
from tests.helpers_server import threaded_server


@pytest.fixture(scope="module")
def server(tiny_weights_dir: Path) -> Iterator[str]:
    """Base URL of a uvicorn server (background thread) on the tiny model."""
    with threaded_server(tiny_settings(tiny_weights_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def new_context(browser: Any) -> Iterator[Callable[..., Any]]:
    """Factory: a fresh browser context (options as Playwright's), closed after the test."""
    contexts: list[Any] = []

    def make(**options: Any) -> Any:
        context = browser.new_context(**options)
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
