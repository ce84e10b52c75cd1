"""The blob store failing under the service (issue 7): uploads and outputs, on local disk and on S3.

What must hold whatever the storage does:
- a submission whose files cannot be stored answers 503 with the error envelope, creates no job, and
  leaves no blob (nor a part of one) behind; once storage is back, the same submission goes through;
- a handler whose `save_output` fails has a failed attempt, retried by the job's policy: a job is never
  `completed` with an output missing, and a job whose every attempt failed is `failed`, not completed.

The faults are real ones where a real one can be made: a folder replaced by a file (every write under
it fails with ENOTDIR), the moto S3 server stopped, the bucket deleted, a multipart upload aborted by the
bucket's side. The servers are real `jobmill serve` processes, with their embedded workers for outputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from jobmill.api.app import API_PREFIX
from jobmill.storage.base import BlobInfo, BlobStore
from tests.api.harness import Api, check_envelope
from tests.chaos.storage_handlers import report_text
from tests.support.processes import wait_until
from tests.support.s3 import DUMMY_CREDENTIALS, MotoServer
from tests.support.service import ServeProcess, create_key, service_env

pytestmark = pytest.mark.slow

JOBS = f"{API_PREFIX}/jobs"
TENANT = "acme"
HANDLERS = "tests.chaos.storage_handlers"
BUCKET = "jobmill-chaos"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
TEXT = b"the quick brown fox jumps over the lazy dog\n" * 200
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def moto(aws_env: None) -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_admin(moto: MotoServer) -> Any:
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    client.close()


def s3_url(moto: MotoServer) -> str:
    # One attempt and a short connect timeout: a stopped server must fail the request in well under a
    # second, not after boto3's backoff.
    return f"s3://{BUCKET}/blobs?endpoint_url={moto.endpoint}&max_attempts=1&connect_timeout=1"


def bucket_contents(s3_admin: Any) -> tuple[list[str], list[str]]:
    """The bucket's object keys and its unfinished multipart uploads."""
    objects = s3_admin.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    uploads = s3_admin.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return [o["Key"] for o in objects], [u["Key"] for u in uploads]


@contextmanager
def serving(env: dict[str, str], log: Path, *args: str) -> Iterator[ServeProcess]:
    server = ServeProcess(env, log, "--app", HANDLERS, *args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def files_under(root: Path, *, besides: tuple[Path, ...] = ()) -> list[Path]:
    """Every file under `root` (temporary ones included), except the obstacles a test planted."""
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p not in besides)


def block(folder: Path) -> Path:
    """Make every write under `folder` fail for real: the folder becomes a plain file (ENOTDIR)."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("an obstacle planted by the storage-fault tests\n")
    return folder


def multipart(kind: str = "chaos.output") -> dict[str, Any]:
    return {
        "data": {"spec": json.dumps({"kind": kind, "params": {}})},
        "files": {"image": ("photo.png", PNG, "image/png"), "notes": ("notes.txt", TEXT, "text/plain")},
    }


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    error = check_envelope(response)
    assert error["code"] == "unavailable", error
    # No internals of the failure (paths, endpoints, botocore types) in the answer.
    assert "blobs" not in error["message"] and "127.0.0.1" not in error["message"], error


def job_count(client: httpx.Client) -> int:
    response = client.get(JOBS)
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


def event_statuses(client: httpx.Client, job_id: str) -> list[str]:
    """The status changes the job's event stream reports, replayed from the start; the stream ends
    with the terminal one."""
    statuses = []
    with client.stream("GET", f"{JOBS}/{job_id}/events", timeout=30) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                if event["type"] == "status":
                    statuses.append(event["status"])
    return statuses


def wait_terminal(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    def terminal() -> Any:
        job: dict[str, Any] = client.get(f"{JOBS}/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    finished: dict[str, Any] = wait_until(terminal, timeout, f"job {job_id} to finish", interval=0.05)
    return finished


def submit(client: httpx.Client, kind: str, **spec: Any) -> str:
    response = client.post(JOBS, json={"kind": kind, "params": {}, **spec})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


# ------------------------------------------------------------------------------------ uploads: local


def test_upload_to_unwritable_local_storage_is_503_and_leaves_nothing(tmp_path: Path) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    root = tmp_path / "blobs"
    with serving(env, tmp_path / "serve.log", "--no-worker") as server:
        key = create_key(env, TENANT, "user")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            obstacle = block(root / TENANT)
            assert_unavailable(client.post(JOBS, **multipart()))
            assert job_count(client) == 0
            assert files_under(root, besides=(obstacle,)) == []
            # Storage back: the same submission is accepted and both files are stored.
            obstacle.unlink()
            response = client.post(JOBS, **multipart())
            assert response.status_code == 202, response.text
            assert job_count(client) == 1
            assert len(files_under(root)) == 2


class FaultAfter:
    """The real blob store, with a fault triggered once `after_bytes` of the `nth` upload went through.

    The fault itself is done by `fault` on the real backend (a folder removed, an upload aborted): this
    wrapper only chooses the moment, which no outside observer of a server could.
    """

    def __init__(self, inner: BlobStore, nth: int, after_bytes: int, fault: Callable[[], object]) -> None:
        self.inner = inner
        self.url = inner.url
        self.nth = nth
        self.after_bytes = after_bytes
        self.fault = fault
        self.uploads = 0
        self.fired = False

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> BlobInfo:
        self.uploads += 1
        if self.uploads == self.nth:
            chunks = self._watch(chunks)
        return await self.inner.put_stream(key, chunks, content_type=content_type, max_bytes=max_bytes)

    async def _watch(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in chunks:
            if seen >= self.after_bytes and not self.fired:
                self.fired = True
                self.fault()
            seen += len(chunk)
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _two_file_submission(api: Api, second_size: int) -> httpx.Response:
    big = b"%PDF-1.7\n" + b"0" * (second_size - 9)
    return api.post(
        JOBS,
        token=api.user,
        data={"spec": json.dumps({"kind": "t.echo", "params": {}})},
        files={"first": ("a.png", PNG, "image/png"), "second": ("b.pdf", big, "application/pdf")},
    )


def test_local_storage_failing_mid_upload_is_503_and_removes_the_stored_files(tmp_path: Path) -> None:
    api = Api(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        root = api.blob_root
        # The folder being written (holding the second file's partial file) is removed while the second
        # file is written, and a file takes its place so it cannot be made again. The first file, stored
        # whole in its own folder, is untouched by the fault.
        second = root / "t1" / "uploads" / "second"
        faulty = FaultAfter(api.services.blobs, nth=2, after_bytes=2 * MIB, fault=lambda: block(second))
        api.services.blobs = faulty
        assert_unavailable(_two_file_submission(api, 3 * MIB))
        assert faulty.fired
        assert api.get(JOBS, token=api.user).json()["jobs"] == []
        # No job refers to the first file, so it was deleted again; nothing of the second remains.
        assert files_under(root, besides=(second,)) == []
        second.unlink()
        response = _two_file_submission(api, 3 * MIB)
        assert response.status_code == 202, response.text
        assert len(files_under(root)) == 2
    finally:
        api.close()


# --------------------------------------------------------------------------------------- uploads: S3


def test_upload_with_s3_down_is_503_and_creates_no_job(
    tmp_path: Path, moto: MotoServer, s3_admin: Any
) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, JOBMILL_STORAGE_URL=s3_url(moto))
    with serving(env, tmp_path / "serve.log", "--no-worker") as server:
        key = create_key(env, TENANT, "user")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            # The bucket is gone: S3 answers NoSuchBucket.
            s3_admin.delete_bucket(Bucket=BUCKET)
            assert_unavailable(client.post(JOBS, **multipart()))
            assert job_count(client) == 0
            s3_admin.create_bucket(Bucket=BUCKET)
            assert client.post(JOBS, **multipart()).status_code == 202
            assert len(bucket_contents(s3_admin)[0]) == 2
            # The whole S3 service is gone: connections are refused.
            moto.stop()
            assert_unavailable(client.post(JOBS, **multipart()))
            assert job_count(client) == 1
            # The API itself stays up and answers everything that needs no storage.
            assert client.get(f"{API_PREFIX}/healthz").status_code == 200
            assert client.post(JOBS, json={"kind": "chaos.output", "params": {}}).status_code == 202


def test_s3_failing_mid_multipart_upload_is_503_and_leaves_nothing(
    tmp_path: Path, moto: MotoServer, s3_admin: Any
) -> None:
    api = Api(tmp_path, f"sqlite:///{tmp_path / 'jobs.db'}", storage_url=s3_url(moto))
    try:

        def abort_uploads() -> None:
            # The bucket's side ends the multipart upload in progress (as a lifecycle rule or an
            # operator would): the next part and the completion meet NoSuchUpload.
            for upload in s3_admin.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
                s3_admin.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])

        # Parts are 8 MiB: at 9 MiB the first part has been sent and the upload is in progress.
        faulty = FaultAfter(api.services.blobs, nth=2, after_bytes=9 * MIB, fault=abort_uploads)
        api.services.blobs = faulty
        assert_unavailable(_two_file_submission(api, 10 * MIB))
        assert faulty.fired
        assert api.get(JOBS, token=api.user).json()["jobs"] == []
        # The first file (stored whole) was deleted again; no part of the second remains.
        assert bucket_contents(s3_admin) == ([], [])
    finally:
        api.close()


# ------------------------------------------------------------------------------------------- outputs


# The three ways a handler publishes: on the worker's loop, from a thread, from a child process.
OUTPUT_KINDS = ("chaos.output", "chaos.output_sync", "chaos.output_isolated")


def test_save_output_failing_every_attempt_fails_the_job(tmp_path: Path) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, JOBMILL_RETRY_BASE_S="0.05")
    root = tmp_path / "blobs"
    # Outputs live under <tenant>/jobs/: with that folder a file, every output write fails.
    obstacle = block(root / TENANT / "jobs")
    with serving(env, tmp_path / "serve.log") as server:
        key = create_key(env, TENANT, "user")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            jobs = {kind: submit(client, kind, max_attempts=2) for kind in OUTPUT_KINDS}
            for kind, job_id in jobs.items():
                job = wait_terminal(client, job_id)
                assert job["status"] == "failed", (kind, job)
                assert job["attempts"] == 2, (kind, job)
                assert job["outputs"] == [], (kind, job)
                assert job["error"]["type"] in ("StorageError", "StorageUnavailable"), (kind, job["error"])
                statuses = event_statuses(client, job_id)
                assert statuses == ["pending", "running", "pending", "running", "failed"], (kind, statuses)
    assert files_under(root, besides=(obstacle,)) == []


def test_save_output_failing_once_is_retried_and_completes_with_the_output(tmp_path: Path) -> None:
    # A retry delay long enough to take the fault away while the jobs wait for their second attempt.
    env = service_env(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, JOBMILL_RETRY_BASE_S="1")
    root = tmp_path / "blobs"
    obstacle = block(root / TENANT / "jobs")
    with serving(env, tmp_path / "serve.log") as server:
        key = create_key(env, TENANT, "user")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            jobs = {kind: submit(client, kind) for kind in OUTPUT_KINDS}

            def all_retrying() -> bool:
                views = [client.get(f"{JOBS}/{job_id}").json() for job_id in jobs.values()]
                assert not [v for v in views if v["status"] == "completed"], views
                return all(v["status"] == "pending" and v["attempts"] >= 1 for v in views)

            wait_until(all_retrying, 30, "every first attempt to fail and be retried", interval=0.02)
            obstacle.unlink()
            for kind, job_id in jobs.items():
                job = wait_terminal(client, job_id)
                assert job["status"] == "completed", (kind, job)
                # Normally 2; 3 if a retry came before the fault was taken away.
                assert job["attempts"] >= 2, (kind, job)
                (output,) = job["outputs"]
                assert output["name"] == "report.txt"
                downloaded = httpx.get(output["download_url"], timeout=10)
                assert downloaded.status_code == 200
                assert downloaded.text == report_text(job_id, job["attempts"]), kind
                statuses = event_statuses(client, job_id)
                assert statuses.count("completed") == 1 and statuses[-1] == "completed", (kind, statuses)
    # One output blob per job, nothing of the failed attempts.
    assert len(files_under(root)) == len(OUTPUT_KINDS)


def test_save_output_to_a_failing_bucket_is_retried_and_completes(
    tmp_path: Path, moto: MotoServer, s3_admin: Any
) -> None:
    env = service_env(
        f"sqlite:///{tmp_path / 'jobs.db'}",
        tmp_path,
        JOBMILL_STORAGE_URL=s3_url(moto),
        JOBMILL_RETRY_BASE_S="1",
    )
    with serving(env, tmp_path / "serve.log") as server:
        key = create_key(env, TENANT, "user")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as client:
            s3_admin.delete_bucket(Bucket=BUCKET)
            job_id = submit(client, "chaos.output")

            def retrying() -> bool:
                job = client.get(f"{JOBS}/{job_id}").json()
                assert job["status"] != "completed", job
                return bool(job["status"] == "pending" and job["attempts"] >= 1)

            wait_until(retrying, 30, "the first attempt to fail and be retried", interval=0.02)
            s3_admin.create_bucket(Bucket=BUCKET)
            job = wait_terminal(client, job_id)
            assert job["status"] == "completed", job
            assert job["attempts"] >= 2, job
            assert [o["name"] for o in job["outputs"]] == ["report.txt"]
            objects, uploads = bucket_contents(s3_admin)
            assert len(objects) == 1 and uploads == []
            body = s3_admin.get_object(Bucket=BUCKET, Key=objects[0])["Body"].read()
            assert body.decode() == report_text(job_id, job["attempts"])
