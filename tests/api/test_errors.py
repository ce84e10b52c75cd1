"""The error envelope everywhere: unhandled exceptions, wrong methods, unknown routes, request ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobmill.api.app import API_PREFIX
from tests.api.harness import Api, check_envelope


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_unhandled_exception_is_a_500_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = api.submit(api.user)

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret detail")

    # The store read of GET job (an API-key caller's key and job, read together).
    monkeypatch.setattr(api.services.jobs.store, "job_get_many_by_api_key", explode)
    # A real server logs the exception that the app re-raises after answering; here it must not
    # reach the test, so this one client does not re-raise it.
    client = api._client(raise_app_exceptions=False)
    try:
        response = api.get(f"{API_PREFIX}/jobs/{job['id']}", token=api.user, client=client)
    finally:
        api.run(client.aclose())
    assert response.status_code == 500
    error = check_envelope(response)
    assert error["code"] == "internal"
    assert "secret detail" not in response.text
    assert "RuntimeError" not in response.text and "Traceback" not in response.text
    # The traceback goes to the log, with the request.
    assert any("secret detail" in str(r.exc_info[1]) for r in caplog.records if r.exc_info), caplog.records


def test_wrong_method_and_unknown_route(api: Api) -> None:
    response = api.request("PUT", f"{API_PREFIX}/jobs", token=api.user)
    assert response.status_code == 405
    assert check_envelope(response)["code"] == "method_not_allowed"
    assert response.headers["allow"]
    response = api.request("DELETE", f"{API_PREFIX}/queues", token=api.admin)
    assert response.status_code == 405

    response = api.get(f"{API_PREFIX}/nothing/here", token=api.user)
    assert response.status_code == 404
    assert check_envelope(response)["code"] == "not_found"


def test_request_ids(api: Api) -> None:
    # A sane incoming id is kept, in the header and in error bodies.
    response = api.get(f"{API_PREFIX}/jobs", headers={"X-Request-ID": "trace-123.abc"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "trace-123.abc"
    assert response.json()["error"]["request_id"] == "trace-123.abc"
    # An insane one is replaced.
    response = api.get(f"{API_PREFIX}/jobs", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert " " not in response.headers["x-request-id"]
    # Successful answers carry one too, different per request.
    ids = {api.get(f"{API_PREFIX}/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_validation_errors_use_the_envelope(api: Api) -> None:
    response = api.get(f"{API_PREFIX}/jobs", token=api.user, params={"limit": "many"})
    assert response.status_code == 422
    error = check_envelope(response)
    assert error["code"] == "invalid"
    assert isinstance(error["details"], list) and error["details"][0]["loc"] == ["query", "limit"]
    response = api.get(f"{API_PREFIX}/jobs/not-a-uuid", token=api.user)
    assert response.status_code == 400
    assert check_envelope(response)["code"] == "malformed"
