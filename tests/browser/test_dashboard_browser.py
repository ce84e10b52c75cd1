"""The dashboard in a real browser (headless chromium via Playwright) against a real `jobmill serve`:
live progress without reloads, cancel through the confirmation dialog, an admin's priority change, and
what a user may not see or do. Screenshots of each page go to test-output/screenshots/."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.browser.helpers import Dashboard, screenshot, sign_in

pytestmark = pytest.mark.slow

expect: Any = None  # playwright.sync_api.expect, imported with the browser fixture (playwright is optional)


@pytest.fixture(autouse=True)
def _expect(browser: Any) -> None:
    global expect
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=10_000)
    expect = playwright_expect


def submit(dashboard: Dashboard, key: str, kind: str, params: dict[str, Any], **fields: Any) -> str:
    with httpx.Client(base_url=dashboard.url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as api:
        response = api.post("/api/v1/jobs", json={"kind": kind, "params": params, **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


def job_status(dashboard: Dashboard, job_id: str) -> str:
    headers = {"Authorization": f"Bearer {dashboard.admin_key}"}
    response = httpx.get(f"{dashboard.url}/api/v1/jobs/{job_id}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def progress_value(bar: Any) -> float:
    """The bar's value (-1 while indeterminate)."""
    return float(bar.evaluate("b => b.hasAttribute('value') ? b.value : -1"))


def test_user_watches_progress_live_then_cancels_through_the_dialog(
    dashboard: Dashboard, new_context: Any
) -> None:
    page = new_context().new_page()
    sign_in(page, dashboard.url, dashboard.user_key, shot="01-sign-in")
    # 200 ticks of 0.1 s: still running when the test cancels it.
    job_id = submit(dashboard, dashboard.user_key, "e2e.ticker", {"ticks": 200, "interval_s": 0.1})

    page.goto(f"{dashboard.url}/ui/jobs")
    navigations: list[str] = []
    page.on(
        "framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None
    )
    page.evaluate("window.__sameDocument = true")  # a reload would drop it
    row = page.locator(f'tr[data-live-job="{job_id}"]')
    expect(row.locator('[data-field="status"]')).to_have_text("running")
    expect(page.locator("[data-live-indicator]")).to_have_text("live")

    # The bar advances while the page stays the same document: values only come from live events.
    bar = row.locator('progress[data-field="progress"]')
    samples = [progress_value(bar)]
    deadline = time.monotonic() + 10
    while len(set(samples)) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        samples.append(progress_value(bar))
    assert len(set(samples)) >= 4, samples
    assert samples == sorted(samples) and samples[-1] > max(samples[0], 0), samples
    text = row.locator('[data-field="progress-text"]').inner_text()
    assert text.endswith("%") and float(text.rstrip("%")) > 0, text
    assert navigations == [], navigations
    assert page.evaluate("window.__sameDocument === true")
    screenshot(page, "02-jobs-live")

    # The job page: live too; no admin actions for a user.
    row.get_by_role("link").click()
    page.wait_for_url(f"{dashboard.url}/ui/jobs/{job_id}")
    head = page.locator(f'.job-head[data-live-job="{job_id}"]')
    expect(head.locator('[data-field="status"]')).to_have_text("running")
    head_bar = head.locator('progress[data-field="progress"]')
    before = progress_value(head_bar)
    expect(head.locator('[data-field="stage"]')).to_have_text("ticking")
    deadline = time.monotonic() + 5
    while progress_value(head_bar) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert progress_value(head_bar) > before
    expect(page.locator("[data-admin-actions]")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    expect(page.get_by_role("button", name="Admin cancel…")).to_have_count(0)
    screenshot(page, "03-job-running")

    # A forged admin action from this user's own signed-in browser, with a valid CSRF token: refused.
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf
    for action, form in (("priority", {"priority": "50"}), ("admin-cancel", {})):
        forged = page.request.post(
            f"{dashboard.url}/ui/jobs/{job_id}/{action}", form={"csrf": csrf, **form}, max_redirects=0
        )
        assert forged.status == 403, (action, forged.status, forged.text())
    assert job_status(dashboard, job_id) == "running"

    # Cancel through the confirmation dialog.
    page.get_by_role("button", name="Cancel job…").click()
    dialog = page.locator("dialog#cancel-dialog")
    expect(dialog).to_be_visible()
    screenshot(page, "04-cancel-dialog", full_page=False)
    dialog.get_by_role("button", name="Keep it").click()  # changing one's mind changes nothing
    expect(dialog).to_be_hidden()
    assert job_status(dashboard, job_id) == "running"
    page.get_by_role("button", name="Cancel job…").click()
    dialog.get_by_role("button", name="Yes, cancel the job").click()
    page.wait_for_url(f"{dashboard.url}/ui/jobs/{job_id}")
    expect(page.locator("[data-flash]")).to_contain_text("Stopping the job")
    expect(page.locator('.job-head [data-field="status"]')).to_have_text("cancelled", timeout=15_000)
    expect(page.get_by_role("button", name="Cancel job…")).to_have_count(0)
    assert job_status(dashboard, job_id) == "cancelled"
    expect(page.locator(".timeline")).to_contain_text("cancelled")
    screenshot(page, "05-job-cancelled")


def test_admin_raises_a_pending_jobs_priority_and_a_user_cannot(
    dashboard: Dashboard, new_context: Any
) -> None:
    # A queue no worker serves: the jobs stay pending, in submission order.
    jobs = [
        submit(dashboard, dashboard.user_key, "e2e.sleep", {"seconds": 1}, queue="parked") for _ in range(3)
    ]
    last = jobs[-1]

    user = new_context().new_page()
    sign_in(user, dashboard.url, dashboard.user_key)
    user.goto(f"{dashboard.url}/ui/jobs/{last}")
    expect(user.locator('[data-position] [data-field="position"]')).to_have_text("3")
    expect(user.locator("[data-admin-actions]")).to_have_count(0)
    expect(user.get_by_role("button", name="Set priority")).to_have_count(0)
    expect(user.get_by_role("button", name="Cancel job…")).to_be_visible()  # their own job
    screenshot(user, "06-user-pending-job")

    admin = new_context().new_page()
    sign_in(admin, dashboard.url, dashboard.admin_key)
    admin.goto(f"{dashboard.url}/ui/jobs/{last}")
    expect(admin.locator('[data-position] [data-field="position"]')).to_have_text("3")
    expect(admin.locator("[data-role]")).to_have_text("admin")
    section = admin.locator("[data-admin-actions]")
    expect(section).to_be_visible()
    section.get_by_label("Priority").fill("10")
    section.get_by_role("button", name="Set priority").click()
    admin.wait_for_url(f"{dashboard.url}/ui/jobs/{last}")
    expect(admin.locator("[data-flash]")).to_have_text("Priority set to 10; new queue position: 1.")
    expect(admin.locator('[data-position] [data-field="position"]')).to_have_text("1")
    expect(admin.locator('[data-field="priority"]')).to_have_text("10")
    screenshot(admin, "07-admin-priority")

    # The jobs list shows the new order of the queue; the user's open page follows without a reload.
    admin.goto(f"{dashboard.url}/ui/jobs?queue=parked")
    positions = {
        job_id: admin.locator(f'tr[data-live-job="{job_id}"] [data-field="position"]').inner_text()
        for job_id in jobs
    }
    assert positions == {jobs[0]: "2", jobs[1]: "3", last: "1"}, positions
    expect(user.locator('[data-position] [data-field="position"]')).to_have_text("1")

    admin.goto(f"{dashboard.url}/ui/audit")
    expect(admin.locator("table.audit")).to_contain_text("job.reprioritize")
    expect(admin.locator(f'table.audit a[href="/ui/jobs/{last}"]')).to_have_count(1)
    screenshot(admin, "08-audit")

    admin.goto(f"{dashboard.url}/")
    parked = admin.locator('tr[data-queue="parked"]')
    expect(parked.locator('[data-field="pending"]')).to_have_text("3")
    screenshot(admin, "09-overview")

    # The user is refused the audit log even by URL.
    response = user.goto(f"{dashboard.url}/ui/audit")
    assert response is not None and response.status == 403


def test_pages_fit_a_phone(dashboard: Dashboard, new_context: Any) -> None:
    phone = new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = phone.new_page()
    sign_in(page, dashboard.url, dashboard.user_key)
    for path, name in (("/", "10-phone-overview"), ("/ui/jobs", "11-phone-jobs")):
        page.goto(f"{dashboard.url}{path}")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow)
        screenshot(page, name)
    # Tables turn into labelled cards: no header row, each cell says what it is.
    expect(page.locator("table.jobs thead")).to_be_hidden()
    first_status = page.locator('table.jobs tbody tr td[data-label="Status"]').first
    label = first_status.evaluate("td => getComputedStyle(td, '::before').content")
    assert label == '"Status"', label
