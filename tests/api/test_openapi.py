"""The OpenAPI document (issue 3, acceptance 7). Every response of every API test is also checked against
it by the harness (tests/api/harness.py); here the document itself, and that the checker can fail."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from jobmill.api.app import API_PREFIX
from tests.api.harness import OPENAPI_PATH, Api, OpenApiChecker


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_document_validates(api: Api) -> None:
    response = api.get(OPENAPI_PATH)
    assert response.status_code == 200
    doc = response.json()
    validate(doc)  # raises OpenAPIValidationError
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    expected = {
        f"{API_PREFIX}/jobs": {"get", "post"},
        f"{API_PREFIX}/jobs/{{job_id}}": {"get", "delete"},
        f"{API_PREFIX}/jobs/{{job_id}}/cancel": {"post"},
        f"{API_PREFIX}/jobs/{{job_id}}/priority": {"patch"},
        f"{API_PREFIX}/jobs/{{job_id}}/retry": {"post"},
        f"{API_PREFIX}/jobs/{{job_id}}/outputs/{{name}}": {"get"},
        f"{API_PREFIX}/jobs/{{job_id}}/events": {"get"},
        f"{API_PREFIX}/events": {"get"},
        f"{API_PREFIX}/queues": {"get"},
        f"{API_PREFIX}/audit": {"get"},
        f"{API_PREFIX}/healthz": {"get"},
        f"{API_PREFIX}/readyz": {"get"},
        f"{API_PREFIX}/metrics": {"get"},
    }
    assert {path: set(item) for path, item in paths.items()} == expected
    # The submit body is documented both ways, and errors everywhere use the envelope.
    submit = paths[f"{API_PREFIX}/jobs"]["post"]
    content = submit["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    assert "spec" in content["multipart/form-data"]["schema"]["required"]
    assert "JobCreate" in doc["components"]["schemas"]
    for path, item in paths.items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != f"{API_PREFIX}/readyz":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # Interactive docs are served.
    assert api.get("/docs").status_code == 200


def test_the_response_checker_catches_mismatches(api: Api) -> None:
    checker: OpenApiChecker = api.openapi
    job = api.submit(api.user)
    path = f"{API_PREFIX}/jobs/{job['id']}"
    request = httpx.Request("GET", f"http://test{path}")

    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body, request=request)

    checker.check("GET", path, answer(200, job))  # the real body passes
    for bad in (
        {**job, "status": "exploded"},
        {k: v for k, v in job.items() if k != "id"},
        {**job, "id": "x"},
    ):
        with pytest.raises(AssertionError, match="does not match its OpenAPI schema"):
            checker.check("GET", path, answer(200, bad))
    with pytest.raises(AssertionError, match="does not document"):
        checker.check("GET", path, answer(418, {"error": {}}))
    with pytest.raises(AssertionError, match="does not match"):
        checker.check("GET", path, answer(404, {"detail": "Not Found"}))
