"""Cancel through HTTP (issue 3, acceptance 3): one-step and two-step, owners, admins, tenants."""

from __future__ import annotations

import base64
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from jobmill.api.app import API_PREFIX
from jobmill.storage import signing
from tests.api.conftest import MakeApi
from tests.api.harness import Api


def _cancel(api: Api, job_id: str, token: str, **kwargs: Any) -> Any:
    return api.post(f"{API_PREFIX}/jobs/{job_id}/cancel", token=token, **kwargs)


def test_pending_running_terminal(api: Api) -> None:
    pending = api.submit(api.user)
    response = _cancel(api, pending["id"], api.user)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["queue_position"] is None
    assert api.job(api.user, pending["id"])["status"] == "cancelled"

    running = api.submit(api.user, queue="run")
    api.start(running["id"])
    response = _cancel(api, running["id"], api.user)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "cancelling"
    # Cancelling a cancelling job is idempotent.
    again = _cancel(api, running["id"], api.user)
    assert again.status_code == 202 and again.json()["status"] == "cancelling"

    # Terminal jobs: 409 with the current status in the details.
    done = api.submit(api.user, queue="done")
    api.complete(api.start(done["id"]), {"ok": True})
    failed = api.submit(api.user, queue="failed")
    api.fail(api.start(failed["id"]))
    for job_id, status in ((pending["id"], "cancelled"), (done["id"], "completed"), (failed["id"], "failed")):
        response = _cancel(api, job_id, api.user)
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_state"
        assert error["details"] == {"status": status}
        assert api.job(api.user, job_id)["status"] == status


def test_unknown_other_tenant_and_malformed_ids(api: Api) -> None:
    foreign = api.submit(api.other_user)
    unknown = str(uuid.uuid4())
    bodies = []
    for job_id in (unknown, foreign["id"]):
        response = _cancel(api, job_id, api.admin)
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        del error["request_id"]
        # The id the caller sent is echoed; nothing else tells an existing foreign job from no job.
        bodies.append((response.headers.get("content-type"), str(error).replace(job_id, "<id>")))
    assert bodies[0] == bodies[1]
    assert api.job(api.other_user, foreign["id"])["status"] == "pending"

    for bad in ("not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"):
        response = _cancel(api, bad, api.user)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["code"] == "malformed"


def test_owner_policy_and_admin_cancel_is_audited(api: Api) -> None:
    job = api.submit(api.user)
    denied = _cancel(api, job["id"], api.user2)
    assert denied.status_code == 403, denied.text
    assert denied.json()["error"]["code"] == "forbidden"
    assert api.job(api.user, job["id"])["status"] == "pending"
    assert api.audit() == []

    # A JWT user of the tenant is another principal too.
    assert _cancel(api, job["id"], api.jwt("alice")).status_code == 403

    response = _cancel(api, job["id"], api.admin)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    [entry] = api.audit()
    assert entry["actor"] == api.subject_of(api.admin)
    assert entry["action"] == "job.cancel"
    assert entry["job_id"] == job["id"]
    assert entry["tenant"] == "t1"
    assert entry["before"]["status"] == "pending"
    assert entry["after"]["status"] == "cancelled"

    # An owner's own cancel is not an admin action: nothing more in the audit log.
    mine = api.submit(api.user)
    assert _cancel(api, mine["id"], api.user).status_code == 200
    assert len(api.audit()) == 1


@pytest.fixture
def confirm_api(make_api: MakeApi) -> Api:
    return make_api(cancel_confirm=True)


def _confirm(api: Api, job_id: str, token: str) -> str:
    response = _cancel(api, job_id, token)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["expires_in_s"] == 60
    assert body["job"]["id"] == job_id
    assert api.job(api.user, job_id)["status"] in ("pending", "running")
    token_value: str = body["confirm_token"]
    return token_value


def test_two_step_cancel(confirm_api: Api) -> None:
    api = confirm_api
    job = api.submit(api.user)
    confirm = _confirm(api, job["id"], api.user)
    assert api.job(api.user, job["id"])["status"] == "pending"
    # An empty body asks again for a token; it does not cancel.
    assert _cancel(api, job["id"], api.user, json={}).status_code == 202
    assert api.job(api.user, job["id"])["status"] == "pending"

    response = _cancel(api, job["id"], api.user, json={"confirm_token": confirm})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    running = api.submit(api.user, queue="run")
    api.start(running["id"])
    confirm = _confirm(api, running["id"], api.user)
    assert api.job(api.user, running["id"])["status"] == "running"
    response = _cancel(api, running["id"], api.user, json={"confirm_token": confirm})
    assert response.status_code == 202 and response.json()["status"] == "cancelling"

    # Step one already refuses what the cancel would refuse.
    assert _cancel(api, job["id"], api.user).status_code == 409
    other = api.submit(api.user)
    assert _cancel(api, other["id"], api.user2).status_code == 403


def test_two_step_cancel_refuses_wrong_tokens(confirm_api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api = confirm_api
    a, b = api.submit(api.user), api.submit(api.user)
    token_b = _confirm(api, b["id"], api.user)
    token_a = _confirm(api, a["id"], api.user)

    payload, mac = token_a.split(".")
    tampered = [
        token_b,  # another job's token
        payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac,
        payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB"),
        token_a + "x",
        "garbage",
    ]
    for bad in tampered:
        response = _cancel(api, a["id"], api.user, json={"confirm_token": bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_confirm_token"
    # An admin cannot use the user's token either: it names its caller.
    assert _cancel(api, a["id"], api.admin, json={"confirm_token": token_a}).status_code == 400
    assert api.job(api.user, a["id"])["status"] == "pending"

    # The token says when it expires: 60 s after it was issued.
    expires_at = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["e"]
    assert 55 <= expires_at - time.time() <= 60

    # At that moment it is refused (the clock of the token check is moved, nobody sleeps).
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: float(expires_at)))
    expired = _cancel(api, a["id"], api.user, json={"confirm_token": token_a})
    assert expired.status_code == 400, expired.text
    assert "expired" in expired.json()["error"]["message"]
    assert api.job(api.user, a["id"])["status"] == "pending"

    # A second earlier it is still good: the refusal above was the expiry, not the token.
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: expires_at - 1.0))
    response = _cancel(api, a["id"], api.user, json={"confirm_token": token_a})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


def test_admin_retry(api: Api) -> None:
    failed = api.submit(api.user, queue="r", max_attempts=2)
    job = api.start(failed["id"])
    api.fail(job)
    assert api.job(api.user, failed["id"])["status"] == "failed"
    response = api.post(f"{API_PREFIX}/jobs/{failed['id']}/retry", token=api.admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "pending" and body["attempts"] == 0 and body["error"] is None
    assert body["queue_position"] == 1
    # Only failed or cancelled jobs can be retried.
    conflict = api.post(f"{API_PREFIX}/jobs/{failed['id']}/retry", token=api.admin)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["details"] == {"status": "pending"}
    assert api.post(f"{API_PREFIX}/jobs/{failed['id']}/retry", token=api.user).status_code == 403
