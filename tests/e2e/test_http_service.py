"""The whole service as deployed: `jobmill serve --no-worker` and `jobmill worker` as separate processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from tests.support.processes import WorkerProcess, wait_until
from tests.support.s3 import DUMMY_CREDENTIALS, MotoServer
from tests.support.service import ServeProcess, create_key, service_env

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local"])
def storage_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "local":
        yield f"file://{tmp_path / 'blobs'}"
        return
    # A real S3 HTTP endpoint (moto's server); both processes inherit the credentials from here.
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = MotoServer().start()
    try:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(
            Bucket="jobmill-e2e"
        )
        yield f"s3://jobmill-e2e/blobs?endpoint_url={server.endpoint}"
    finally:
        server.stop()


@pytest.fixture
def env(database_url: str, storage_url: str, tmp_path: Path) -> dict[str, str]:
    return service_env(database_url, tmp_path, JOBMILL_STORAGE_URL=storage_url)


@pytest.fixture
def worker(env: dict[str, str], database_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    settings = {k.removeprefix("JOBMILL_").lower(): v for k, v in env.items() if k.startswith("JOBMILL_")}
    settings.pop("database_url")
    settings.pop("workdir_root")
    process = WorkerProcess(database_url, tmp_path / "work", tmp_path / "worker.log", **settings).start()
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("database_url", "storage_url"),
    [("sqlite", "local"), ("postgres", "local"), ("sqlite", "s3")],
    indirect=True,
)
def test_upload_transform_download(api: ServeProcess, worker: WorkerProcess, env: dict[str, str]) -> None:
    key = create_key(env, "acme", "user")
    headers = {"Authorization": f"Bearer {key}"}
    payload = b"hello jobmill, shout this back\n" * 5000
    with httpx.Client(base_url=api.url, headers=headers, timeout=10) as client:
        response = client.post(
            "/api/v1/jobs",
            data={"spec": json.dumps({"kind": "e2e.upper", "params": {}})},
            files={"source": ("../../etc/shout.txt", payload, "text/plain")},
        )
        assert response.status_code == 202, response.text
        job = response.json()
        assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
        assert job["inputs"][0]["size"] == len(payload) and job["inputs"][0]["filename"] == "shout.txt"

        def finished() -> dict[str, object] | None:
            current = client.get(f"/api/v1/jobs/{job['id']}").json()
            return current if current["status"] in ("completed", "failed") else None

        done = wait_until(finished, 30, "the worker to finish the job", interval=0.05)
        assert done["status"] == "completed", (done, worker.log())
        (output,) = done["outputs"]  # type: ignore[misc]
        assert output["name"] == "upper.txt" and output["size"] == len(payload)
        # The signed URL needs no credentials; the bytes are the transformed upload.
        downloaded = httpx.get(output["download_url"], timeout=10)
        assert downloaded.status_code == 200 and downloaded.content == payload.upper()
        redirect = client.get(f"/api/v1/jobs/{job['id']}/outputs/upper.txt")
        assert redirect.status_code == 307
        assert httpx.get(redirect.headers["location"], timeout=10).content == payload.upper()
        # Another tenant sees nothing of it.
        other = {"Authorization": f"Bearer {create_key(env, 'other', 'admin')}"}
        assert client.get(f"/api/v1/jobs/{job['id']}", headers=other).status_code == 404
