"""The authorization matrix (issue 3, acceptance 4): every endpoint x every kind of caller, and the audit
log of every admin action."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from jobmill.api.app import API_PREFIX
from tests.api.harness import BAD_KEY, Api

CALLERS = ("none", "bad", "expired_jwt", "user", "admin", "other_admin")


def _caller_token(api: Api, caller: str) -> str | None:
    return {
        "none": None,
        "bad": BAD_KEY,
        "expired_jwt": api.jwt("admin-sub", "t1", "admin", expires_in_s=-60),
        "user": api.user,
        "admin": api.admin,
        "other_admin": api.other_admin,
    }[caller]


@dataclass(frozen=True)
class Case:
    """How to call one endpoint, and the status each caller gets."""

    prepare: Callable[[Api], tuple[str, dict[str, Any]]]  # a fresh target: (path, request kwargs)
    expect: dict[str, int]
    check: Callable[[Api, str, Any], None] = field(default=lambda api, caller, response: None)
    call: str = "http"  # or "stream" (SSE: read the head, then disconnect) or "ws" (a WebSocket)


def _statuses(user: int, admin: int, other_admin: int, anonymous: int = 401) -> dict[str, int]:
    return {
        "none": anonymous,
        "bad": anonymous,
        "expired_jwt": anonymous,
        "user": user,
        "admin": admin,
        "other_admin": other_admin,
    }


def _public(status: int = 200) -> dict[str, int]:
    return dict.fromkeys(CALLERS, status)


def _pending(api: Api) -> str:
    return str(api.submit(api.user)["id"])


def _cancelled(api: Api) -> str:
    job_id = _pending(api)
    assert api.post(f"{API_PREFIX}/jobs/{job_id}/cancel", token=api.user).status_code == 200
    return job_id


def _with_output(api: Api) -> str:
    job_id = api.submit(api.user, queue="outq")["id"]
    output = api.store_output("t1", "out.txt", b"hello", "text/plain")
    api.complete(api.start(job_id), {"ok": 1}, {"out.txt": output})
    return str(job_id)


def _file_url(api: Api) -> str:
    job_id = _with_output(api)
    url: str = api.job(api.user, job_id)["outputs"][0]["download_url"]
    return url.removeprefix("http://test")


def _no_foreign_jobs(api: Api, caller: str, response: Any) -> None:
    if caller == "other_admin":  # t2 sees only what t2 submitted
        assert {j["submitted_by"] for j in response.json()["jobs"]} <= {api.subject_of(api.other_admin)}


def _no_foreign_queues(api: Api, caller: str, response: Any) -> None:
    if caller == "other_admin":  # the counts are t2's alone
        t2_jobs = api.get(f"{P}/jobs", token=api.other_admin, params={"status": "pending"}).json()["jobs"]
        assert sum(q["pending"] for q in response.json()["queues"]) == len(t2_jobs)
        assert sum(q["running"] for q in response.json()["queues"]) == 0


def _is_event_stream(api: Api, caller: str, response: Any) -> None:
    if response.status_code != 200:
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"


def _no_foreign_audit(api: Api, caller: str, response: Any) -> None:
    if caller == "other_admin":
        assert [e for e in response.json()["entries"] if e["tenant"] != "t2"] == []


P = API_PREFIX
MATRIX: dict[tuple[str, str], Case] = {
    ("POST", f"{P}/jobs"): Case(
        lambda api: (f"{P}/jobs", {"json": {"kind": "t.echo"}}), _statuses(202, 202, 202)
    ),
    ("GET", f"{P}/jobs"): Case(lambda api: (f"{P}/jobs", {}), _statuses(200, 200, 200), _no_foreign_jobs),
    ("GET", f"{P}/jobs/{{job_id}}"): Case(
        lambda api: (f"{P}/jobs/{_pending(api)}", {}), _statuses(200, 200, 404)
    ),
    ("POST", f"{P}/jobs/{{job_id}}/cancel"): Case(
        lambda api: (f"{P}/jobs/{_pending(api)}/cancel", {}), _statuses(200, 200, 404)
    ),
    ("DELETE", f"{P}/jobs/{{job_id}}"): Case(
        lambda api: (f"{P}/jobs/{_pending(api)}", {}), _statuses(403, 200, 404)
    ),
    ("PATCH", f"{P}/jobs/{{job_id}}/priority"): Case(
        lambda api: (f"{P}/jobs/{_pending(api)}/priority", {"json": {"priority": 7}}),
        _statuses(403, 200, 404),
    ),
    ("POST", f"{P}/jobs/{{job_id}}/retry"): Case(
        lambda api: (f"{P}/jobs/{_cancelled(api)}/retry", {}), _statuses(403, 200, 404)
    ),
    ("GET", f"{P}/jobs/{{job_id}}/outputs/{{name}}"): Case(
        lambda api: (f"{P}/jobs/{_with_output(api)}/outputs/out.txt", {}), _statuses(307, 307, 404)
    ),
    ("GET", f"{P}/jobs/{{job_id}}/events"): Case(
        lambda api: (f"{P}/jobs/{_pending(api)}/events", {}),
        _statuses(200, 200, 404),
        _is_event_stream,
        "stream",
    ),
    ("GET", f"{P}/events"): Case(
        lambda api: (f"{P}/events", {}), _statuses(200, 200, 200), _is_event_stream, "stream"
    ),
    # WebSocket: 200 stands for "ready" sent, 401 for an "unauthenticated" error and close code 4401.
    ("WS", f"{P}/ws"): Case(lambda api: (f"{P}/ws", {}), _statuses(200, 200, 200), call="ws"),
    ("GET", f"{P}/queues"): Case(
        lambda api: (f"{P}/queues", {}), _statuses(200, 200, 200), _no_foreign_queues
    ),
    ("GET", f"{P}/audit"): Case(lambda api: (f"{P}/audit", {}), _statuses(403, 200, 200), _no_foreign_audit),
    ("GET", f"{P}/healthz"): Case(lambda api: (f"{P}/healthz", {}), _public()),
    ("GET", f"{P}/readyz"): Case(lambda api: (f"{P}/readyz", {}), _public()),
    ("GET", f"{P}/metrics"): Case(lambda api: (f"{P}/metrics", {}), _public()),
    ("GET", f"{P}/openapi.json"): Case(lambda api: (f"{P}/openapi.json", {}), _public()),
    ("GET", "/docs"): Case(lambda api: ("/docs", {}), _public()),
    ("GET", "/docs/oauth2-redirect"): Case(lambda api: ("/docs/oauth2-redirect", {}), _public()),
    ("GET", "/"): Case(lambda api: ("/", {}), _public()),
    # A signed download URL is the credential itself: any caller holding it may download.
    ("GET", "/files/{token}"): Case(lambda api: (_file_url(api), {}), _public()),
}


# The dashboard (/ui, cookie sessions with CSRF tokens) has its own tests in tests/browser.
DASHBOARD_PREFIX = "/ui"


def _endpoints(api: Api) -> set[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(api.app.routes):
        assert route.path is not None, route
        if route.path == DASHBOARD_PREFIX or route.path.startswith(DASHBOARD_PREFIX + "/"):
            continue
        for method in (route.methods or {"WS"}) - {"HEAD"}:  # WebSocket routes have no methods
            found.add((method, route.path))
    return found


class WsAnswer:
    """A WebSocket outcome in the matrix's terms."""

    def __init__(self, messages: list[dict[str, Any]], close_code: int | None) -> None:
        self.messages = messages
        types = [m.get("type") for m in messages]
        if types[:1] == ["ready"] and close_code is None:
            self.status_code = 200
        elif (
            types[:1] == ["error"]
            and messages[0]["error"]["code"] == "unauthenticated"
            and close_code == 4401
        ):
            self.status_code = 401
        else:
            self.status_code = -1  # anything else is wrong
        self.detail = (messages, close_code)


def _call(api: Api, case: Case, method: str, caller: str) -> Any:
    path, kwargs = case.prepare(api)
    token = _caller_token(api, caller)
    if case.call == "stream":
        return api.open_stream(path, token)
    if case.call == "ws":
        if token is None:
            return WsAnswer(*api.websocket(path, first_message="{}"))
        return WsAnswer(*api.websocket(f"{path}?token={token}"))
    return api.request(method, path, token=token, **kwargs)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_matrix_covers_every_endpoint(api: Api) -> None:
    endpoints = _endpoints(api)
    assert endpoints == set(MATRIX), (
        f"endpoints without a row in the matrix: {sorted(endpoints - set(MATRIX))}; "
        f"rows without an endpoint: {sorted(set(MATRIX) - endpoints)}"
    )


def test_authorization_matrix(api: Api) -> None:
    failures = []
    for (method, template), case in MATRIX.items():
        for caller in CALLERS:
            response = _call(api, case, method, caller)
            expected = case.expect[caller]
            if response.status_code != expected:
                failures.append(f"{method} {template} as {caller}: {response.status_code} != {expected}")
                continue
            if isinstance(response, WsAnswer):
                continue
            if expected == 401:
                assert response.headers.get("www-authenticate") == "Bearer"
                assert response.json()["error"]["code"] == "unauthenticated"
            elif expected == 403:
                assert response.json()["error"]["code"] == "forbidden"
            elif expected == 404:
                assert response.json()["error"]["code"] == "not_found"
            case.check(api, caller, response)
    assert not failures, "\n".join(failures)


def test_jwt_principals(api: Api) -> None:
    alice = api.jwt("alice", "t1", "user")
    job = api.submit(alice)
    assert job["submitted_by"] == "alice"
    assert api.job(api.user, job["id"])["id"] == job["id"]
    assert api.post(f"{P}/jobs/{job['id']}/cancel", token=api.jwt("bob")).status_code == 403
    assert api.post(f"{P}/jobs/{job['id']}/cancel", token=alice).status_code == 200

    boss = api.jwt("boss", "t1", "admin")
    assert api.get(f"{P}/audit", token=boss).status_code == 200
    assert api.get(f"{P}/jobs/{job['id']}", token=api.jwt("eve", "t2", "admin")).status_code == 404
    # A JWT of the wrong key, or one without a role, is not a principal.
    import jwt as pyjwt

    forged = pyjwt.encode(
        {"sub": "x", "tenant": "t1", "role": "admin", "exp": 2**40}, "w" * 40, algorithm="HS256"
    )
    assert api.get(f"{P}/jobs", token=forged).status_code == 401
    no_role = pyjwt.encode({"sub": "x", "tenant": "t1", "exp": 2**40}, api.settings.jwt_hs256_secret or "")
    assert api.get(f"{P}/jobs", token=no_role).status_code == 401
    # A revoked key stops at once.
    record, token = api.services.access.create_key("t1", "user", "gone", "tests")
    assert api.get(f"{P}/jobs", token=token).status_code == 200
    api.services.access.revoke_key(record.key_id, "tests")
    assert api.get(f"{P}/jobs", token=token).status_code == 401


def test_every_admin_action_is_audited(api: Api) -> None:
    actor = api.subject_of(api.admin)
    reprioritized = _pending(api)
    deleted = _pending(api)
    retried = _cancelled(api)
    cancelled = _pending(api)
    assert (
        api.request(
            "PATCH", f"{P}/jobs/{reprioritized}/priority", token=api.admin, json={"priority": 9}
        ).status_code
        == 200
    )
    assert api.request("DELETE", f"{P}/jobs/{deleted}", token=api.admin).status_code == 200
    retry = api.post(f"{P}/jobs/{retried}/retry", token=api.admin)
    assert retry.status_code == 200 and retry.json()["status"] == "pending"
    assert api.post(f"{P}/jobs/{cancelled}/cancel", token=api.admin).status_code == 200

    entries = {(e["action"], e["job_id"]): e for e in api.audit()}
    expected: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {
        ("job.reprioritize", reprioritized): ({"status": "pending", "priority": 0}, {"priority": 9}),
        ("job.cancel", deleted): ({"status": "pending"}, {"status": "cancelled"}),
        ("job.retry", retried): ({"status": "cancelled"}, {"status": "pending"}),
        ("job.cancel", cancelled): ({"status": "pending"}, {"status": "cancelled"}),
    }
    assert set(entries) == set(expected), entries
    for key, (before, after) in expected.items():
        entry = entries[key]
        assert entry["actor"] == actor and entry["tenant"] == "t1"
        assert entry["before"] is not None and entry["after"] is not None, entry
        assert before.items() <= entry["before"].items(), entry
        assert after.items() <= entry["after"].items(), entry
    # Another tenant's admin sees none of it.
    assert api.audit(api.other_admin) == []
