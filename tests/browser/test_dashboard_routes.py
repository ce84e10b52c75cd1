"""The dashboard's routes without a browser (httpx + ASGITransport, in process): sign-in, the session
cookie, CSRF, roles, escaping. Fast; the real-browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from jobmill.api.app import API_PREFIX
from jobmill.dashboard.pages import timeline
from jobmill.dashboard.session import LOGIN_CSRF_COOKIE, SESSION_COOKIE
from jobmill.domain.job import JobEvent, JobStatus
from tests.api.harness import BAD_KEY, Api

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    app = Api(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}")
    yield app
    app.close()


class Browser:
    """A cookie-keeping client of the in-process app: one 'browser' signed in (or not) to the dashboard."""

    def __init__(self, api: Api, base_url: str = "http://test") -> None:
        self.api = api
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app), base_url=base_url)
        self.csrf = ""

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.api.run(self.client.get(path, **kwargs))

    def post(self, path: str, data: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        return self.api.run(self.client.post(path, data=data or {}, **kwargs))

    def sign_in(self, key: str) -> httpx.Response:
        page = self.get("/")
        assert page.status_code == 200
        login_csrf = csrf_of(page.text)
        response = self.post("/ui/sign-in", {"csrf": login_csrf, "api_key": key, "next": "/ui/jobs"})
        if response.status_code == 303:
            self.csrf = csrf_of(self.get("/ui/jobs").text)
        return response

    def close(self) -> None:
        self.api.run(self.client.aclose())


@pytest.fixture
def browsers(api: Api) -> Iterator[list[Browser]]:
    made: list[Browser] = []
    yield made
    for browser in made:
        browser.close()


def new_browser(api: Api, browsers: list[Browser], base_url: str = "http://test") -> Browser:
    browser = Browser(api, base_url)
    browsers.append(browser)
    return browser


def csrf_of(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match, html[:2000]
    return match.group(1)


def set_cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


def pending_job(api: Api, token: str, **fields: Any) -> str:
    return str(api.submit(token, **fields)["id"])


def status_of(api: Api, job_id: str) -> str:
    return str(api.job(api.admin, job_id)["status"])


# -- sign-in and the session cookie --------------------------------------------------------------------


def test_sign_in_page_is_served_at_the_root_with_security_headers(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    page = browser.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert 'name="api_key"' in page.text and 'action="/ui/sign-in"' in page.text
    cookie = set_cookie_header(page, LOGIN_CSRF_COOKIE).lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_sign_in_with_a_bad_key_fails(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    for key in (BAD_KEY, "not a key", ""):
        response = browser.sign_in(key)
        assert response.status_code == 401, response.text
        assert "was not accepted" in response.text
        assert not any(h.startswith(SESSION_COOKIE) for h in response.headers.get_list("set-cookie"))
    assert browser.get("/ui/jobs").status_code == 303  # still signed out


def test_session_cookie_is_httponly_samesite_strict_and_expiring(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    response = browser.sign_in(api.user)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/jobs"
    cookie = set_cookie_header(response, SESSION_COOKIE)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attributes  # plain http here; see the https test
    assert api.user not in cookie  # the key is inside a signed token, not as is
    jobs = browser.get("/ui/jobs")
    assert jobs.status_code == 200 and "Sign out" in jobs.text


def test_session_cookie_is_secure_on_https(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers, base_url="https://test")
    response = browser.sign_in(api.user)
    assert response.status_code == 303
    assert "; secure" in set_cookie_header(response, SESSION_COOKIE).lower()


def test_tampered_or_foreign_session_cookies_are_refused(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    good = browser.client.cookies[SESSION_COOKIE]
    body, mac = good.split(".")
    for forged in (f"{body}.{mac[:-2]}AA", f"{body[:-2]}AA.{mac}", api.user, "x"):
        browser.client.cookies.set(SESSION_COOKIE, forged)
        response = browser.get("/ui/jobs")
        assert response.status_code == 303, forged
    # A download token is signed with the same secret but for another purpose: never a session.
    job_id = api.submit(api.user, queue="outq")["id"]
    output = api.store_output("t1", "out.txt", b"hello", "text/plain")
    api.complete(api.start(job_id), {"ok": 1}, {"out.txt": output})
    url = api.job(api.user, job_id)["outputs"][0]["download_url"]
    browser.client.cookies.set(SESSION_COOKIE, url.rsplit("/", 1)[-1])
    assert browser.get("/ui/jobs").status_code == 303


def test_revoking_the_key_ends_its_sessions(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    token = api.token("t1", "user", "revoked-soon")
    assert browser.sign_in(token).status_code == 303
    assert browser.get("/ui/jobs").status_code == 200
    key_id = api.services.access.authenticate(token).key_id
    assert key_id is not None
    api.services.access.revoke_key(key_id, "tests")
    assert browser.get("/ui/jobs").status_code == 303


def test_sign_out_clears_the_session(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    stale = browser.client.cookies[SESSION_COOKIE]
    assert browser.post("/ui/sign-out", {"csrf": "wrong"}).status_code == 403
    response = browser.post("/ui/sign-out", {"csrf": browser.csrf})
    assert response.status_code == 303
    cleared = set_cookie_header(response, SESSION_COOKIE).lower()
    assert "max-age=0" in cleared or "expires=thu, 01 jan 1970" in cleared
    assert browser.get("/ui/jobs").status_code == 303
    assert stale  # (the cookie itself stays valid until it expires: it is a signed bearer token)


def test_unauthenticated_pages_redirect_to_sign_in(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    job_id = pending_job(api, api.user)
    for path in ("/ui/jobs?status=pending", f"/ui/jobs/{job_id}", "/ui/audit"):
        response = browser.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/?next=%2Fui%2F"), response.headers["location"]
    for path in (f"/ui/jobs/{job_id}/cancel", f"/ui/jobs/{job_id}/priority"):
        assert browser.post(path, {"priority": "5"}).status_code == 303
    assert status_of(api, job_id) == "pending"
    # Fragments and the live stream too (scripts notice the redirect and reload the page).
    for path in ("/ui/jobs/rows", "/ui/queues", "/ui/events", f"/ui/jobs/{job_id}/panel"):
        assert browser.get(path).status_code == 303, path


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    login_csrf = csrf_of(browser.get("/").text)
    for target, expected in (
        ("/ui/jobs?status=failed", "/ui/jobs?status=failed"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
    ):
        browser.client.cookies.delete(SESSION_COOKIE)
        browser.client.cookies.set(LOGIN_CSRF_COOKIE, login_csrf)
        response = browser.post("/ui/sign-in", {"csrf": login_csrf, "api_key": api.user, "next": target})
        assert response.status_code == 303
        assert response.headers["location"] == expected, target


# -- CSRF ----------------------------------------------------------------------------------------------


def test_sign_in_needs_the_form_token(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    token = csrf_of(browser.get("/").text)
    assert browser.post("/ui/sign-in", {"api_key": api.user}).status_code == 403
    assert browser.post("/ui/sign-in", {"csrf": token + "x", "api_key": api.user}).status_code == 403
    other = new_browser(api, browsers)  # a token from the page of another browser (an attacker's)
    assert other.post("/ui/sign-in", {"csrf": token, "api_key": api.user}).status_code == 403


def test_actions_need_the_session_csrf_token(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.admin).status_code == 303
    job_id = pending_job(api, api.admin)
    other = new_browser(api, browsers)
    assert other.sign_in(api.admin).status_code == 303
    assert other.csrf != browser.csrf
    for path, data in (
        (f"/ui/jobs/{job_id}/cancel", {}),
        (f"/ui/jobs/{job_id}/admin-cancel", {}),
        (f"/ui/jobs/{job_id}/priority", {"priority": "9"}),
    ):
        for csrf in (None, "", "wrong", other.csrf):
            form = dict(data) if csrf is None else {**data, "csrf": csrf}
            response = browser.post(path, form)
            assert response.status_code == 403, (path, csrf, response.text)
            assert response.json()["error"]["details"] == {"reason": "csrf"}
    job = api.job(api.admin, job_id)
    assert (job["status"], job["priority"]) == ("pending", 0)
    assert api.audit() == []
    # The same request with the right token works; the header form is accepted too.
    response = browser.post(
        f"/ui/jobs/{job_id}/priority", {"priority": "9"}, headers={"X-CSRF-Token": browser.csrf}
    )
    assert response.status_code == 303
    assert api.job(api.admin, job_id)["priority"] == 9


def test_get_requests_change_nothing(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.admin).status_code == 303
    job_id = pending_job(api, api.admin)
    for path in ("cancel", "admin-cancel", "priority", "retry"):
        response = browser.get(f"/ui/jobs/{job_id}/{path}")
        assert response.status_code in (404, 405), (path, response.status_code)
    assert status_of(api, job_id) == "pending"


# -- roles ---------------------------------------------------------------------------------------------


def test_users_see_no_admin_actions_and_are_refused_them(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    pending = pending_job(api, api.user)
    cancelled = pending_job(api, api.user)
    api.post(f"{API_PREFIX}/jobs/{cancelled}/cancel", token=api.user)
    page = browser.get(f"/ui/jobs/{pending}")
    assert page.status_code == 200
    assert "data-admin-actions" not in page.text and "/priority" not in page.text
    assert "admin-cancel" not in page.text and "Audit log" not in page.text
    assert 'data-action="cancel"' in page.text  # their own job: they may cancel it
    # Forged admin POSTs with a valid CSRF token: the server refuses them.
    for path, data in (
        (f"/ui/jobs/{pending}/priority", {"priority": "50"}),
        (f"/ui/jobs/{pending}/admin-cancel", {}),
        (f"/ui/jobs/{cancelled}/retry", {}),
    ):
        response = browser.post(path, {**data, "csrf": browser.csrf})
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["code"] == "forbidden"
    assert api.job(api.user, pending)["priority"] == 0
    assert status_of(api, pending) == "pending"
    assert status_of(api, cancelled) == "cancelled"
    audit = browser.get("/ui/audit")
    assert audit.status_code == 403 and "Admins only" in audit.text


def test_users_cannot_cancel_jobs_of_others(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    theirs = pending_job(api, api.user2)
    page = browser.get(f"/ui/jobs/{theirs}")
    assert page.status_code == 200 and 'data-action="cancel"' not in page.text
    assert browser.post(f"/ui/jobs/{theirs}/cancel", {"csrf": browser.csrf}).status_code == 403
    assert status_of(api, theirs) == "pending"


def test_jobs_of_other_tenants_are_not_found(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.admin).status_code == 303
    foreign = pending_job(api, api.other_user)
    assert browser.get(f"/ui/jobs/{foreign}").status_code == 404
    assert browser.get(f"/ui/jobs/{uuid4()}").status_code == 404
    assert browser.get("/ui/jobs/not-a-uuid").status_code == 404
    assert foreign not in browser.get("/ui/jobs").text
    response = browser.post(f"/ui/jobs/{foreign}/admin-cancel", {"csrf": browser.csrf})
    assert response.status_code == 404
    assert api.job(api.other_user, foreign)["status"] == "pending"


def test_admin_actions_work_and_are_audited(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.admin).status_code == 303
    first, second = pending_job(api, api.user), pending_job(api, api.user)
    page = browser.get(f"/ui/jobs/{second}")
    assert "data-admin-actions" in page.text and "Position <strong" in page.text
    response = browser.post(f"/ui/jobs/{second}/priority", {"priority": "10", "csrf": browser.csrf})
    assert response.status_code == 303 and response.headers["location"] == f"/ui/jobs/{second}"
    page = browser.get(f"/ui/jobs/{second}")
    assert "Priority set to 10; new queue position: 1." in page.text
    assert re.search(r'data-field="position">1<', page.text)
    assert "Priority set to" not in browser.get(f"/ui/jobs/{second}").text  # a flash shows once
    # Out of range or not a number: a message, nothing changed.
    browser.post(f"/ui/jobs/{second}/priority", {"priority": "abc", "csrf": browser.csrf})
    assert "whole number" in browser.get(f"/ui/jobs/{second}").text
    browser.post(f"/ui/jobs/{first}/admin-cancel", {"csrf": browser.csrf})
    assert status_of(api, first) == "cancelled"
    browser.post(f"/ui/jobs/{first}/retry", {"csrf": browser.csrf})
    assert status_of(api, first) == "pending"
    browser.post(f"/ui/jobs/{first}/cancel", {"csrf": browser.csrf})
    assert status_of(api, first) == "cancelled"
    # A second cancel of a finished job: a message, not an error page.
    response = browser.post(f"/ui/jobs/{first}/cancel", {"csrf": browser.csrf})
    assert response.status_code == 303
    assert "Cannot cancel it: the job is cancelled." in browser.get(f"/ui/jobs/{first}").text
    actions = [entry["action"] for entry in api.audit()]
    assert actions.count("job.reprioritize") == 1 and actions.count("job.retry") == 1
    assert actions.count("job.cancel") == 2  # the admin cancel and the admin's cancel of a user's job
    audit = browser.get("/ui/audit")
    assert (
        audit.status_code == 200
        and "job.reprioritize" in audit.text
        and f'href="/ui/jobs/{second}"' in audit.text
    )


# -- pages ---------------------------------------------------------------------------------------------


def test_output_is_escaped(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    job_id = pending_job(api, api.user, params={"name": "<script>alert(1)</script>", "q": '"><img src=x>'})
    page = browser.get(f"/ui/jobs/{job_id}").text
    assert "<script>alert(1)</script>" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.replace('<script src="/ui/static/app.js', "")


def test_jobs_list_filters_and_fragment(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    echo = pending_job(api, api.user)
    other = pending_job(api, api.user, kind="t.other")
    api.post(f"{API_PREFIX}/jobs/{other}/cancel", token=api.user)
    everything = browser.get("/ui/jobs").text
    assert echo in everything and other in everything
    pending_only = browser.get("/ui/jobs", params={"status": "pending"}).text
    assert echo in pending_only and other not in pending_only
    by_queue = browser.get("/ui/jobs", params={"queue": "other"}).text
    assert other in by_queue and echo not in by_queue
    by_kind = browser.get("/ui/jobs", params={"kind": "t.echo"}).text
    assert echo in by_kind and other not in by_kind
    bad = browser.get("/ui/jobs", params={"status": "nope", "kind": "<b>"})
    assert bad.status_code == 200 and "Ignored filter" in bad.text and "<b>" not in bad.text
    rows = browser.get("/ui/jobs/rows", params={"status": "cancelled"})
    assert rows.status_code == 200 and other in rows.text and echo not in rows.text
    assert "<html" not in rows.text
    assert re.search(rf'data-live-job="{echo}".*?data-field="position">1<', everything, re.S)


def test_overview_shows_queue_counts(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    assert browser.sign_in(api.user).status_code == 303
    for _ in range(3):
        pending_job(api, api.user)
    running = pending_job(api, api.user, kind="t.other")
    api.start(running)
    page = browser.get("/")
    assert page.status_code == 200
    row = re.search(r'<tr data-queue="default">(.*?)</tr>', page.text, re.S)
    assert row and re.search(r'data-field="pending">3<', row.group(1)), page.text
    other = re.search(r'<tr data-queue="other">(.*?)</tr>', page.text, re.S)
    assert other and re.search(r'data-field="running">1<', other.group(1))
    assert 'data-label="Busy workers" class="num">1<' in other.group(1)
    fragment = browser.get("/ui/queues")
    assert fragment.status_code == 200 and 'data-queue="default"' in fragment.text


def test_static_files_are_served_and_nothing_else(api: Api, browsers: list[Browser]) -> None:
    browser = new_browser(api, browsers)
    js = browser.get("/ui/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert browser.get("/ui/static/app.css").headers["content-type"].startswith("text/css")
    for name in ("../routes.py", "%2e%2e%2froutes.py", "missing.js"):
        assert browser.get(f"/ui/static/{name}").status_code == 404


# -- the timeline (pure) -------------------------------------------------------------------------------


def test_timeline_folds_events_into_steps_with_durations() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    job_id = UUID(int=1)

    def event(
        seq: int, at_s: float, type_: str, status: str, stage: str | None, progress: float | None
    ) -> JobEvent:
        return JobEvent(
            seq,
            job_id,
            "t1",
            seq,
            t0 + timedelta(seconds=at_s),
            type_,
            JobStatus(status),
            stage,
            progress,
            None,
            None,
        )

    events = [
        event(1, 0, "status", "pending", None, None),
        event(2, 2, "status", "running", None, None),
        event(3, 2.5, "progress", "running", "download", 0),
        event(4, 4, "progress", "running", "download", 50),
        event(5, 6, "progress", "running", "encode", 0),
        event(6, 9, "progress", "running", "encode", 100),
        event(7, 10, "status", "completed", "encode", 100),
    ]
    steps = timeline(events, t0 + timedelta(seconds=60), t0 + timedelta(seconds=10))
    assert [(s.kind, s.label) for s in steps] == [
        ("status", "pending"),
        ("status", "running"),
        ("stage", "download"),
        ("stage", "encode"),
        ("status", "completed"),
    ]
    assert [s.duration_s for s in steps] == [2.0, 0.5, 3.5, 4.0, None]
    assert steps[2].progress == 50 and steps[2].events == 2
    live = timeline(events[:5], t0 + timedelta(seconds=8), None)
    assert live[-1].ongoing and live[-1].duration_s == 2.0
