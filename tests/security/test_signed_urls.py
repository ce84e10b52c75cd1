"""Signed download URLs under attack: tampered, expired, replayed for another job's output or another
purpose."""

from __future__ import annotations

import base64
import json
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from jobmill.api.app import API_PREFIX
from jobmill.storage import signing
from tests.api.harness import SECRET_KEY, Api

JOBS = f"{API_PREFIX}/jobs"


def _job_with_output(api: Api, token: str, tenant: str, data: bytes) -> tuple[str, str]:
    """A completed job of `tenant` with one output; returns (job id, /files/ path of its download URL)."""
    job = api.submit(token, queue="out")
    output = api.store_output(tenant, "report.pdf", data, "application/pdf")
    api.complete(api.start(job["id"]), None, {"report.pdf": output})
    url = api.job(token, job["id"])["outputs"][0]["download_url"]
    return job["id"], urlsplit(url).path


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refused(api: Api, path: str) -> None:
    response = api.get(path)
    assert response.status_code in (403, 404), (path, response.status_code, response.text[:200])
    assert response.json()["error"]["code"] in ("invalid_signature", "not_found")


def test_tampered_tokens_are_refused(api: Api) -> None:
    _, mine = _job_with_output(api, api.user, "t1", b"%PDF mine")
    _, theirs = _job_with_output(api, api.other_user, "t2", b"%PDF theirs")
    token = mine.removeprefix("/files/")
    body, mac = token.split(".")
    payload = json.loads(_unb64(body))
    their_body = theirs.removeprefix("/files/").split(".")[0]
    forged = [
        # Another job's (and tenant's) output key under my valid MAC, and the reverse.
        f"{their_body}.{mac}",
        # My payload edited: another key, a later expiry, no expiry; each re-encoded under the old MAC.
        _b64(
            json.dumps({**payload, "p": {**payload["p"], "k": "t2/outputs/report.pdf/" + "0" * 32}}).encode()
        )
        + f".{mac}",
        _b64(json.dumps({**payload, "e": payload["e"] + 10**9}, separators=(",", ":")).encode()) + f".{mac}",
        _b64(json.dumps({"p": payload["p"]}).encode()) + f".{mac}",
        # Signature games: none, empty, truncated, padded, another alphabet, doubled.
        f"{body}.",
        f"{body}",
        f"{body}.{mac[:-2]}",
        f"{body}.{mac}=",
        f"{body}.{mac.replace('-', '+').replace('_', '/')}",
        f"{body}.{mac}.{mac}",
        f"{body}={body}.{mac}",
        # A MAC made with another secret.
        signing.sign_token("not-the-secret", payload["p"], payload["e"]),
        # Path tricks.
        "..%2F..%2Fetc%2Fpasswd",
        "x" * 5000,
    ]
    for bad in forged:
        if bad != token:  # e.g. the other-alphabet spelling of a MAC that has no - or _
            _refused(api, f"/files/{bad}")
    assert api.get(mine).status_code == 200  # the genuine one still works


def test_expired_tokens_are_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = _job_with_output(api, api.user, "t1", b"%PDF expiring")
    ttl = api.settings.signed_url_ttl_s
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: time.time() + ttl - 5))
    assert api.get(path).status_code == 200
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: time.time() + ttl + 1))
    response = api.get(path)
    assert response.status_code == 403 and "expired" in response.json()["error"]["message"]
    # A token signed with the right secret but expired long ago, or at the epoch.
    key = path.removeprefix("/files/").split(".")[0]
    grant = json.loads(_unb64(key))["p"]
    for expires_at in (0, int(time.time()) - 1, -(2**62)):
        _refused(api, "/files/" + signing.sign_token(SECRET_KEY, grant, expires_at))


def test_a_url_gives_its_own_output_only(api: Api) -> None:
    first, first_path = _job_with_output(api, api.user, "t1", b"%PDF first")
    second, second_path = _job_with_output(api, api.user, "t1", b"%PDF second")
    theirs, _ = _job_with_output(api, api.other_user, "t2", b"%PDF theirs")
    assert api.get(first_path).content == b"%PDF first"
    assert api.get(second_path).content == b"%PDF second"
    # The redirect endpoint signs only the caller's tenant's outputs.
    for job_id in (theirs,):
        response = api.get(f"{JOBS}/{job_id}/outputs/report.pdf", token=api.user, follow_redirects=False)
        assert response.status_code == 404
    for job_id in (first, second):
        response = api.get(
            f"{JOBS}/{job_id}/outputs/report.pdf", token=api.other_admin, follow_redirects=False
        )
        assert response.status_code == 404
    # Output names are looked up, never used as keys or paths.
    for name in ("..%2F..%2Fsecret.key", "%2e%2e", "report.pdf%00", "x" * 300):
        response = api.get(f"{JOBS}/{first}/outputs/{name}", token=api.user, follow_redirects=False)
        assert response.status_code in (400, 404), (name, response.status_code)


def test_tokens_of_other_purposes_are_not_download_grants(api: Api) -> None:
    # A cancel confirmation token is signed with the same secret: it must not open files, and a file
    # token must not confirm a cancel.
    _, path = _job_with_output(api, api.user, "t1", b"%PDF purpose")
    key = json.loads(_unb64(path.removeprefix("/files/").split(".")[0]))["p"]["k"]
    forged = signing.sign_token(SECRET_KEY, {"a": "cancel", "j": key, "k": None}, int(time.time()) + 60)
    _refused(api, f"/files/{forged}")
    # A grant for a key that is not a blob key (a path) is refused even when correctly signed.
    for bad_key in ("../secret.key", "/etc/passwd", "t1/../../x", ""):
        forged = signing.sign_token(SECRET_KEY, {"k": bad_key, "fn": "x"}, int(time.time()) + 60)
        _refused(api, f"/files/{forged}")
    pending = api.submit(api.user)
    file_token = path.removeprefix("/files/")
    response = api.post(f"{JOBS}/{pending['id']}/cancel", token=api.user, json={"confirm_token": file_token})
    # Without two-step cancel the token is ignored and the cancel simply happens; the point is that it
    # is never taken as a grant for anything else: no 5xx, a job answer.
    assert response.status_code in (200, 400), response.text


def test_a_deleted_output_url_is_dead(api: Api) -> None:
    job_id, path = _job_with_output(api, api.user, "t1", b"%PDF gone")
    for blob in api.blob_files():
        blob.unlink()
    response = api.get(path)
    assert response.status_code == 404, response.text
    assert job_id
