"""Hostile JSON bodies: deeply nested, huge, invalid UTF-8, wrong types. Refused quickly, with the
envelope."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from jobmill.api.app import API_PREFIX
from tests.api.harness import Api

JOBS = f"{API_PREFIX}/jobs"
DEPTH = 100_000


def _nested(depth: int, open_: str = "[", close: str = "]", inner: str = "1") -> bytes:
    return (open_ * depth + inner + close * depth).encode()


def _deep_bodies() -> dict[str, bytes]:
    deep_list = _nested(DEPTH)
    deep_object = _nested(DEPTH, '{"a":', "}")
    return {
        "top-level list": deep_list,
        "params list": b'{"kind": "t.echo", "params": {"x": ' + deep_list + b"}}",
        "params object": b'{"kind": "t.echo", "params": ' + deep_object + b"}",
        # Under the pydantic recursion limit but still deep: must not crash the store or the view.
        "params 250 deep": b'{"kind": "t.echo", "params": ' + _nested(250, '{"a":', "}") + b"}",
    }


def _post(api: Api, path: str, body: bytes | Any, token: str, method: str = "POST") -> tuple[Any, float]:
    started = time.monotonic()
    response = api.request(
        method, path, token=token, content=body, headers={"content-type": "application/json"}
    )
    return response, time.monotonic() - started


@pytest.mark.parametrize("name", list(_deep_bodies()))
def test_deeply_nested_submissions_are_refused_quickly(api: Api, name: str) -> None:
    body = _deep_bodies()[name]
    response, elapsed = _post(api, JOBS, body, api.user)
    if name == "params 250 deep":
        assert response.status_code in (202, 413, 422), response.text[:300]
    else:
        assert response.status_code in (413, 422), response.text[:300]
    assert elapsed < 1, elapsed


def test_deeply_nested_bodies_of_other_endpoints(api: Api) -> None:
    job = api.submit(api.user)
    deep = _nested(DEPTH, '{"a":', "}")
    for method, path, token in (
        ("PATCH", f"{JOBS}/{job['id']}/priority", api.admin),
        ("POST", f"{JOBS}/{job['id']}/cancel", api.user),
    ):
        response, elapsed = _post(api, path, deep, token, method)
        assert response.status_code in (400, 413, 422), (path, response.status_code, response.text[:300])
        assert elapsed < 1, elapsed
        deep_list = _nested(DEPTH)
        response, elapsed = _post(api, path, deep_list, token, method)
        assert response.status_code in (400, 413, 422), (path, response.status_code, response.text[:300])
        assert elapsed < 1, elapsed
    assert api.job(api.user, job["id"])["status"] == "pending"


def test_huge_params_are_refused_before_parsing(api: Api) -> None:
    limit = api.settings.max_json_bytes
    huge: list[Any] = [
        {"blob": "x" * (limit * 4)},
        {f"k{i}": i for i in range(limit // 4)},
        {"list": list(range(limit // 2))},
    ]
    for params in huge:
        body = b'{"kind": "t.echo", "params": ' + _dumps(params) + b"}"
        response, elapsed = _post(api, JOBS, body, api.user)
        assert response.status_code == 413, response.text[:300]
        assert response.json()["error"]["details"] == {"limit": limit}
        assert elapsed < 1, elapsed
    assert api.get(JOBS, token=api.user).json()["jobs"] == []


def test_invalid_utf8_is_refused_with_the_envelope(api: Api) -> None:
    job = api.submit(api.user)
    bodies = [
        b'{"kind": "t.echo", "params": {"a": "\xff\xfe"}}',
        b'{"kind": "t.e\xc3cho"}',
        b"\xef\xbb\xbf\xff{}",
        b'{"kind": "t.echo", "params": {"\xed\xa0\x80": 1}}',  # an encoded surrogate
    ]
    for body in bodies:
        response, _ = _post(api, JOBS, body, api.user)
        assert response.status_code in (400, 422), (body, response.text[:300])
    for method, path, token in (
        ("PATCH", f"{JOBS}/{job['id']}/priority", api.admin),
        ("POST", f"{JOBS}/{job['id']}/cancel", api.user),
    ):
        response, _ = _post(api, path, b'{"priority": "\xff"}', token, method)
        assert response.status_code in (400, 422), (path, response.text[:300])
    # The harness checked the envelope of every answer; nothing was created by them.
    assert len(api.get(JOBS, token=api.user).json()["jobs"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"kind": 5},
        {"kind": ["t.echo"]},
        {"kind": "t.echo", "params": []},
        {"kind": "t.echo", "params": "x"},
        {"kind": "t.echo", "priority": "high"},
        {"kind": "t.echo", "priority": 1e308},
        {"kind": "t.echo", "timeout_s": -1},
        {"kind": "t.echo", "timeout_s": "NaN"},
        {"kind": "t.echo", "run_after": "yesterday"},
        {"kind": "t.echo", "queue": {"$ne": None}},
        {"kind": "t.echo", "idempotency_key": 7},
        {"kind": "t.echo", "idempotency_key": "k" * 10_000},
        [{"kind": "t.echo"}],
        "t.echo",
        None,
    ],
)
def test_wrong_types_are_422(api: Api, body: Any) -> None:
    response = api.post(JOBS, token=api.user, json=body)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["error"]["code"] in ("invalid", "unknown_kind")


@pytest.mark.parametrize(
    "params",
    [b'{"a": NaN}', b'{"a": [1, Infinity]}', b'{"a": {"b": -Infinity}}', b'{"a": 1e400}'],
)
def test_non_finite_numbers_in_params_are_422(db_api: Api, params: bytes) -> None:
    # Regression: the JSON parser accepts NaN and Infinity; PostgreSQL's jsonb refused them (a 500) and
    # SQLite stored them as something else than was sent.
    body = b'{"kind": "t.echo", "params": ' + params + b"}"
    response = db_api.post(
        JOBS, token=db_api.user, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:300]
    assert response.json()["error"]["details"][0]["loc"][:2] == ["params", "a"]
    assert db_api.get(JOBS, token=db_api.user).json()["jobs"] == []
    # Big but finite numbers are JSON, and kept as sent.
    body = b'{"kind": "t.echo", "params": {"a": 1e300, "b": ' + b"9" * 400 + b"}}"
    response = db_api.post(
        JOBS, token=db_api.user, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text[:300]
    assert response.json()["params"] == {"a": 1e300, "b": int("9" * 400)}


def test_wrong_types_in_other_bodies_are_422(api: Api) -> None:
    job = api.submit(api.user)
    bodies: list[Any] = [
        {"priority": "1; DROP TABLE jobmill_jobs"},
        {"priority": [1]},
        {"priority": 10**30},
        {},
    ]
    for body in bodies:
        response = api.request("PATCH", f"{JOBS}/{job['id']}/priority", token=api.admin, json=body)
        assert response.status_code == 422, (body, response.text[:300])
    for body in [{"confirm_token": 5}, [1], "x"]:
        response = api.post(f"{JOBS}/{job['id']}/cancel", token=api.user, json=body)
        assert response.status_code == 422, (body, response.text[:300])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
