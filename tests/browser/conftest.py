"""Fixtures of the real-browser tests: a real `jobmill serve` process and Debian's chromium, headless,
driven by Playwright for Python.

Playwright's own browser download cannot work here, so the tests launch the system chromium
(`/usr/bin/chromium`, installed by scripts/bootstrap.sh; `JOBMILL_CHROMIUM` points elsewhere). Without
it the browser tests are skipped, or fail when `JOBMILL_REQUIRE_BROWSER=1` (as in CI).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.helpers import Dashboard
from tests.support.service import ServeProcess, create_key, service_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 800}


def _unavailable(reason: str) -> None:
    if os.environ.get("JOBMILL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"JOBMILL_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def chromium_path() -> str:
    configured = os.environ.get("JOBMILL_CHROMIUM")
    for candidate in (configured, "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    _unavailable(
        "no chromium: run scripts/bootstrap.sh as root (apt-get install chromium) or set JOBMILL_CHROMIUM"
    )
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """`jobmill serve --app tests.e2e.handlers` on SQLite, with its embedded worker (queue `e2e`)."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, JOBMILL_POLL_INTERVAL_S="0.1")
    user_key = create_key(env, "acme", "user")
    admin_key = create_key(env, "acme", "admin")
    server = ServeProcess(env, tmp_path / "serve.log", "--app", "tests.e2e.handlers")
    try:
        server.wait_ready()
        yield Dashboard(server, env, user_key, admin_key)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(dashboard: Dashboard) -> Iterator[Browser]:
    """One headless chromium for the module (closed before the server stops: it depends on it)."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
        raise
    executable = chromium_path()
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Error as exc:
            _unavailable(f"chromium at {executable} does not start: {exc}")
            raise
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Any]:
    """Makes browser contexts (separate cookie jars: one per signed-in person); closes them afterwards."""
    contexts: list[BrowserContext] = []

    def make(**options: Any) -> BrowserContext:
        options.setdefault("viewport", LAPTOP)
        context = browser.new_context(**options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
