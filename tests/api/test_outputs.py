"""Job outputs: signed download URLs, the redirect, and the /files/{token} route."""

from __future__ import annotations

import hashlib
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from jobmill.api.app import API_PREFIX
from jobmill.storage import signing
from tests.api.harness import Api

DATA = b"%PDF-1.4 the result\n" + bytes(range(256)) * 10


def _completed_with_output(api: Api) -> tuple[str, dict[str, object]]:
    job = api.submit(api.user, queue="out")
    output = api.store_output("t1", "report.pdf", DATA, "application/pdf")
    api.complete(api.start(job["id"]), {"pages": 3}, {"report.pdf": output})
    return job["id"], output


def test_outputs_are_listed_and_downloadable(api: Api) -> None:
    job_id, _ = _completed_with_output(api)
    view = api.job(api.user, job_id)
    assert view["status"] == "completed"
    assert view["result"] == {"pages": 3}
    [output] = view["outputs"]
    assert output["name"] == "report.pdf"
    assert output["size"] == len(DATA)
    assert output["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert output["content_type"] == "application/pdf"
    url = urlsplit(output["download_url"])
    assert url.scheme == "http" and url.netloc == "test" and url.path.startswith("/files/")

    download = api.get(url.path)  # no credentials: the URL is the grant
    assert download.status_code == 200, download.text
    assert download.content == DATA
    assert "report.pdf" in download.headers["content-disposition"]

    redirect = api.get(f"{API_PREFIX}/jobs/{job_id}/outputs/report.pdf", token=api.user)
    assert redirect.status_code == 307
    target = urlsplit(redirect.headers["location"])
    assert target.path.startswith("/files/")
    assert api.get(target.path).content == DATA


def test_download_urls_expire(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, _ = _completed_with_output(api)
    path = urlsplit(api.job(api.user, job_id)["outputs"][0]["download_url"]).path
    ttl = api.settings.signed_url_ttl_s
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: time.time() + ttl - 5))
    assert api.get(path).status_code == 200
    monkeypatch.setattr(signing, "time", SimpleNamespace(time=lambda: time.time() + ttl + 1))
    response = api.get(path)
    assert response.status_code == 403
    assert "expired" in response.json()["error"]["message"]


def test_cached_results(api: Api) -> None:
    first = api.submit(api.user, "t.cached", params={"x": 1})
    output = api.store_output("t1", "r.pdf", DATA, "application/pdf")
    api.complete(api.start(first["id"]), {"answer": 42}, {"r.pdf": output})
    again = api.submit(api.user, "t.cached", params={"x": 1})
    assert again["id"] != first["id"]
    assert again["status"] == "completed" and again["cached"] is True
    assert again["result"] == {"answer": 42}
    assert [o["sha256"] for o in again["outputs"]] == [output["sha256"]]
    assert api.get(urlsplit(again["outputs"][0]["download_url"]).path).content == DATA
    # Other params are another computation.
    other = api.submit(api.user, "t.cached", params={"x": 2})
    assert other["status"] == "pending" and other["cached"] is False


def test_tampered_and_unknown(api: Api) -> None:
    job_id, _ = _completed_with_output(api)
    path = urlsplit(api.job(api.user, job_id)["outputs"][0]["download_url"]).path
    token = path.removeprefix("/files/")
    payload, mac = token.split(".")
    flip = {"A": "B"}
    bad_tokens = [
        payload + "." + mac[:-1] + flip.get(mac[-1], "A"),
        payload[:-1] + flip.get(payload[-1], "A") + "." + mac,
        token + ".x",
        "nonsense",
    ]
    for bad in bad_tokens:
        response = api.get(f"/files/{bad}")
        assert response.status_code == 403, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_signature"

    unknown = api.get(f"{API_PREFIX}/jobs/{job_id}/outputs/nope.txt", token=api.user)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    # Another tenant cannot even learn the job exists.
    foreign = api.get(f"{API_PREFIX}/jobs/{job_id}/outputs/report.pdf", token=api.other_user)
    assert foreign.status_code == 404


def test_result_and_error_visibility(api: Api) -> None:
    pending = api.submit(api.user)
    assert api.job(api.user, pending["id"])["result"] is None

    failed = api.submit(api.user, queue="f")
    api.fail(
        api.start(failed["id"]), {"type": "Boom", "message": "it broke", "traceback": "Traceback: secret"}
    )
    as_user = api.job(api.user, failed["id"])
    assert as_user["status"] == "failed"
    assert as_user["error"] == {"type": "Boom", "message": "it broke", "traceback": None}
    assert as_user["result"] is None
    assert api.job(api.admin, failed["id"])["error"]["traceback"] == "Traceback: secret"
    assert "secret" not in api.get(f"{API_PREFIX}/jobs", token=api.user).text
