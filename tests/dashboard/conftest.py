"""Fixtures of the dashboard's tests: the fleet's shop and a headless Chromium (the gateway serves /dashboard)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import User
from tests.dashboard.shop import Shop, open_shop

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Never a browser of Playwright's own: Debian's chromium, headless, with nothing that phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="session")
def shop(gateway_url: str, admin: User) -> Shop:
    return open_shop(gateway_url, admin, "DASH")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright; the tests skip (saying why) when it cannot be launched.

    Module-scoped on purpose: Playwright's sync API keeps an event loop running until it stops, and the
    async tests of later modules cannot run their own while it does.
    """
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (CHROMIUM_PATH overrides)")
    playwright = sync_api.sync_playwright().start()
    try:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except sync_api.Error as exc:
            pytest.skip(f"chromium at {CHROMIUM} could not be launched: {exc}")
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any, gateway_url: str) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) with the gateway as base URL."""
    context = browser.new_context(base_url=gateway_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests leave screenshots: DASHBOARD_SCREENSHOTS, else a pytest temporary directory."""
    chosen = os.environ.get("DASHBOARD_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("dashboard-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path
