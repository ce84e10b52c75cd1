"""Helpers of the browser tests: screenshots and signing in through the page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.processes import REPO
from tests.support.service import ServeProcess

if TYPE_CHECKING:
    from playwright.sync_api import Page

SCREENSHOTS = REPO / "test-output" / "screenshots"


@dataclass
class Dashboard:
    """The `jobmill serve` under test, with keys of tenant `acme`."""

    server: ServeProcess
    env: dict[str, str]
    user_key: str
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.url


def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Saves what the page shows under test-output/screenshots/ (git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def sign_in(page: Page, base_url: str, key: str, *, shot: str | None = None) -> None:
    page.goto(f"{base_url}/")
    page.get_by_label("API key").fill(key)
    if shot:
        screenshot(page, shot)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")
    assert page.get_by_role("button", name="Sign out").is_visible()
