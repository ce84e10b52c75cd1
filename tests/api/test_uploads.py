"""Submissions with files, body limits and idempotency (issue 3, acceptance 5, the HTTP part)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from jobmill.api.app import API_PREFIX
from tests.api.conftest import MakeApi
from tests.api.harness import Api

JOBS = f"{API_PREFIX}/jobs"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n" + b"0" * 300


def _spec(**fields: Any) -> str:
    return json.dumps({"kind": "t.echo", **fields})


def _multipart(api: Api, files: dict[str, Any], spec: str | None = None, **kwargs: Any) -> httpx.Response:
    data = {} if spec is None else {"spec": spec}
    return api.post(JOBS, token=api.user, data=data, files=files, **kwargs)


def _job_count(api: Api) -> int:
    return len(api.get(JOBS, token=api.user).json()["jobs"])


def test_multipart_submission_lists_inputs(api: Api) -> None:
    response = _multipart(
        api,
        {"image": ("photo.png", PNG, "application/octet-stream"), "doc": ("report.pdf", PDF, "text/plain")},
        _spec(params={"w": 3}),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"{JOBS}/{job['id']}"
    assert job["params"] == {"w": 3}
    inputs = {i["name"]: i for i in job["inputs"]}
    assert set(inputs) == {"image", "doc"}
    # Sizes and hashes of the bytes sent; the type is sniffed from the bytes, not taken from the client.
    assert inputs["image"]["size"] == len(PNG)
    assert inputs["image"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert inputs["image"]["content_type"] == "image/png"
    assert inputs["image"]["filename"] == "photo.png"
    assert inputs["doc"]["content_type"] == "application/pdf"
    assert inputs["doc"]["sha256"] == hashlib.sha256(PDF).hexdigest()
    # Both are stored, under generated keys.
    stored = api.blob_files()
    assert len(stored) == 2
    assert {p.read_bytes() for p in stored} == {PNG, PDF}
    assert not any("photo" in str(p) or "report" in str(p) for p in stored)
    # The view is the same on a later GET.
    assert api.job(api.user, job["id"])["inputs"] == job["inputs"]


def test_oversized_file_is_refused_and_nothing_stays(make_api: MakeApi) -> None:
    api = make_api(max_upload_bytes=4096)
    small = ("a.png", PNG, "image/png")
    big = ("b.png", PNG + b"x" * 5000, "image/png")
    response = _multipart(api, {"first": small, "second": big}, _spec())
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"
    # The first file was stored before the second was found too large: it is removed too.
    assert api.blob_files() == []
    assert _job_count(api) == 0
    # At the limit exactly it passes.
    exact = ("c.png", PNG + b"x" * (4096 - len(PNG)), "image/png")
    assert _multipart(api, {"first": exact}, _spec()).status_code == 202
    assert len(api.blob_files()) == 1


def test_disallowed_type_is_refused_and_nothing_stays(make_api: MakeApi) -> None:
    api = make_api(upload_allowed_types="image/png")
    # The client's claimed type does not matter: the bytes are text.
    response = _multipart(
        api, {"ok": ("a.png", PNG, "image/png"), "text": ("b.png", b"just some text\n", "image/png")}, _spec()
    )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert api.blob_files() == []
    assert _job_count(api) == 0
    assert _multipart(api, {"ok": ("a.png", PNG, "image/png")}, _spec()).status_code == 202


def test_invalid_job_stores_nothing(api: Api) -> None:
    response = _multipart(api, {"f": ("a.png", PNG, "image/png")}, json.dumps({"kind": "no.such.kind"}))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "unknown_kind"
    assert api.blob_files() == []
    assert _job_count(api) == 0


def test_request_and_json_body_limits(make_api: MakeApi) -> None:
    api = make_api(max_request_bytes=8192, max_json_bytes=1024, max_upload_bytes=1 << 20)
    # Whole multipart request over the limit, announced by Content-Length.
    response = _multipart(api, {"f": ("a.png", PNG + b"x" * 9000, "image/png")}, _spec())
    assert response.status_code == 413, response.text
    assert response.json()["error"]["details"] == {"limit": 8192}

    # The same without a Content-Length: refused while streaming.
    request = httpx.Request(
        "POST",
        "http://test/",
        data={"spec": _spec()},
        files={"f": ("a.png", PNG + b"x" * 9000, "image/png")},
    )
    body = request.read()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = api.post(
        JOBS, token=api.user, content=chunks(), headers={"content-type": request.headers["content-type"]}
    )
    assert response.status_code == 413, response.text
    assert api.blob_files() == []

    # JSON bodies have their own, smaller limit.
    big_params = {"blob": "x" * 2000}
    response = api.post(JOBS, token=api.user, json={"kind": "t.echo", "params": big_params})
    assert response.status_code == 413, response.text
    encoded = json.dumps({"kind": "t.echo", "params": big_params}).encode()

    async def json_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(encoded), 500):
            yield encoded[start : start + 500]

    response = api.post(
        JOBS, token=api.user, content=json_chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    # Other JSON endpoints too (here the priority change), announced or streamed.
    job = api.submit(api.user)
    padded = b'{"priority": 1' + b" " * 2000 + b"}"
    url = f"{JOBS}/{job['id']}/priority"
    response = api.request(
        "PATCH", url, token=api.admin, content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text

    async def padded_chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(padded), 500):
            yield padded[start : start + 500]

    response = api.request(
        "PATCH", url, token=api.admin, content=padded_chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert api.job(api.user, job["id"])["priority"] == 0
    assert _job_count(api) == 1


def test_malformed_submissions(api: Api) -> None:
    response = api.post(JOBS, token=api.user, content=b"kind=t.echo", headers={"content-type": "text/plain"})
    assert response.status_code == 415, response.text
    response = api.post(
        JOBS,
        token=api.user,
        content=b"kind=t.echo",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415, response.text

    # Multipart without a spec part.
    response = _multipart(api, {"f": ("a.png", PNG, "image/png")})
    assert response.status_code == 422, response.text
    # A spec that is not valid JSON, or not a valid job.
    assert _multipart(api, {"f": ("a.png", PNG, "image/png")}, "{oops").status_code == 422
    assert _multipart(api, {"f": ("a.png", PNG, "image/png")}, _spec(priority=5000)).status_code == 422
    # Input names are identifiers, not paths.
    for name in ("../etc", "a/b", ".hidden", "x" * 200):
        response = _multipart(api, {name: ("a.png", PNG, "image/png")}, _spec())
        assert response.status_code == 422, (name, response.text)
    # Plain JSON: unknown kind, extra fields, bad values.
    for body in (
        {"kind": "nope"},
        {"kind": "t.echo", "colour": 1},
        {"kind": "t.echo", "max_attempts": 0},
        {},
    ):
        response = api.post(JOBS, token=api.user, json=body)
        assert response.status_code == 422, (body, response.text)
    assert (
        api.post(JOBS, token=api.user, content=b"{", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert api.blob_files() == []
    assert _job_count(api) == 0


def test_filename_is_sanitised(api: Api) -> None:
    boundary = "jobmillboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{_spec()}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; '
            'filename="../../etc/pa\x00ss\x07wd.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode("latin-1")
        + PNG
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = api.post(
        JOBS,
        token=api.user,
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 202, response.text
    [view] = response.json()["inputs"]
    filename = view["filename"]
    assert filename is not None and filename.endswith(".png")
    assert "/" not in filename and "\\" not in filename and ".." not in filename
    assert all(ch.isprintable() for ch in filename), filename
    assert "etc" not in filename
    # The blob key does not come from it either.
    [stored] = api.blob_files()
    assert "pa" not in stored.name and stored.resolve().is_relative_to(api.blob_root.resolve())


def test_idempotency(api: Api) -> None:
    first = api.post(
        JOBS, token=api.user, json={"kind": "t.echo", "params": {"a": 1}}, headers={"Idempotency-Key": "k1"}
    )
    assert first.status_code == 202
    again = api.post(
        JOBS, token=api.user, json={"kind": "t.echo", "params": {"a": 1}}, headers={"Idempotency-Key": "k1"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["idempotency_key"] == "k1"
    # The field works like the header.
    field = api.post(
        JOBS, token=api.user, json={"kind": "t.echo", "params": {"a": 1}, "idempotency_key": "k1"}
    )
    assert field.status_code == 200 and field.json()["id"] == first.json()["id"]

    conflict = api.post(
        JOBS, token=api.user, json={"kind": "t.echo", "params": {"a": 2}}, headers={"Idempotency-Key": "k1"}
    )
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert conflict.json()["error"]["details"] == {"job_id": first.json()["id"]}

    disagree = api.post(
        JOBS,
        token=api.user,
        json={"kind": "t.echo", "idempotency_key": "k2"},
        headers={"Idempotency-Key": "k3"},
    )
    assert disagree.status_code == 422, disagree.text
    # The key is per tenant: another tenant's k1 is a new job.
    other = api.post(
        JOBS,
        token=api.other_user,
        json={"kind": "t.echo", "params": {"a": 1}},
        headers={"Idempotency-Key": "k1"},
    )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert _job_count(api) == 1


def test_idempotent_multipart_replay_keeps_one_upload(api: Api) -> None:
    files = {"f": ("a.png", PNG, "image/png")}
    first = _multipart(api, files, _spec(), headers={"Idempotency-Key": "up"})
    assert first.status_code == 202
    again = _multipart(api, files, _spec(), headers={"Idempotency-Key": "up"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert len(api.blob_files()) == 1
    # Another file under the same key is another request.
    changed = _multipart(
        api, {"f": ("a.png", PNG + b"!", "image/png")}, _spec(), headers={"Idempotency-Key": "up"}
    )
    assert changed.status_code == 409, changed.text
    assert len(api.blob_files()) == 1


def test_admin_delete_removes_the_inputs(api: Api) -> None:
    response = _multipart(api, {"f": ("a.png", PNG, "image/png")}, _spec())
    assert response.status_code == 202
    assert len(api.blob_files()) == 1
    deleted = api.request("DELETE", f"{JOBS}/{response.json()['id']}", token=api.admin)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "cancelled"
    assert api.blob_files() == []
