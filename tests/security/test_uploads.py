"""Hostile uploads against a real server: oversized bodies (slow and fast), hostile file names, a lying
content type, and a multipart body of thousands of parts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.api.harness import Api
from tests.security.conftest import LIMITS, Server
from tests.security.wire import rss_kib, send

pytestmark = pytest.mark.slow

JOBS = "/api/v1/jobs"  # the same path in process and on the real server
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 1000
MAX_REQUEST = int(LIMITS["JOBMILL_MAX_REQUEST_BYTES"])
MAX_UPLOAD = int(LIMITS["JOBMILL_MAX_UPLOAD_BYTES"])
BOUNDARY = "hostileboundary7d3"
SPEC = json.dumps({"kind": "e2e.record", "params": {}})


def _part_head(name: str, filename: str | None = None, content_type: str = "image/png") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "\r\n").encode("utf-8", "surrogateescape")


def _multipart(files: list[tuple[str, str, bytes]]) -> bytes:
    body = _part_head("spec") + SPEC.encode() + b"\r\n"
    for name, filename, data in files:
        body += _part_head(name, filename) + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _oversized(total: int, chunk: int) -> Iterator[bytes]:
    """A multipart body whose one file makes the whole request `total` bytes: produced lazily."""
    yield _part_head("spec") + SPEC.encode() + b"\r\n" + _part_head("image", "big.png") + PNG
    sent = 0
    filler = b"\x00" * chunk
    while sent < total:
        yield filler
        sent += chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _job_count(server: Server) -> int:
    with server.client(server.admin) as client:
        return len(client.get(JOBS, params={"limit": 200}).json()["jobs"])


def _assert_too_large(status: int, body: bytes) -> None:
    assert status == 413, body[:500]
    error = json.loads(body)["error"]
    assert error["code"] == "too_large" and error["request_id"], error


def test_oversized_bodies_slow_and_fast_leave_nothing_and_memory_flat(server: Server) -> None:
    blobs_before, jobs_before = server.blob_files(), _job_count(server)
    # Warm up (first multipart parse, first 413) so that lazily imported code does not count as growth.
    warm = send(server.url, "POST", JOBS, _headers(server.user), _oversized(MAX_REQUEST * 2, 64 * 1024))
    _assert_too_large(warm.status, warm.body)
    rss_before = rss_kib(server.pid)

    # Slow: a few KB at a time with pauses, no Content-Length: refused once the limit is crossed, without
    # waiting for the rest (the client would keep sending 4 MB).
    slow = send(
        server.url, "POST", JOBS, _headers(server.user), _oversized(4 * 1024 * 1024, 4096), pause_s=0.002
    )
    _assert_too_large(slow.status, slow.body)
    assert slow.elapsed_s < 5, slow.elapsed_s
    # The answer came once the limit was crossed, while the client was still sending.
    assert slow.sent_bytes < 2 * MAX_REQUEST, slow.sent_bytes

    # Fast, several times: streamed 8 MB bodies, and one announced by Content-Length (refused at once).
    for _ in range(5):
        fast = send(server.url, "POST", JOBS, _headers(server.user), _oversized(8 * 1024 * 1024, 256 * 1024))
        _assert_too_large(fast.status, fast.body)
    announced = send(
        server.url,
        "POST",
        JOBS,
        {**_headers(server.user), "Content-Length": str(64 * 1024 * 1024)},
        iter([PNG]),
        chunked=False,
    )
    _assert_too_large(announced.status, announced.body)
    assert announced.elapsed_s < 2, announced.elapsed_s

    # One file over the per-file limit inside a request under the request limit: refused by the upload.
    body = _multipart([("a", "a.png", PNG), ("b", "b.png", PNG + b"\x00" * MAX_UPLOAD)])
    assert len(body) < MAX_REQUEST
    per_file = send(
        server.url,
        "POST",
        JOBS,
        _headers(server.user),
        [body[i : i + 8192] for i in range(0, len(body), 8192)],
    )
    _assert_too_large(per_file.status, per_file.body)

    growth_kib = rss_kib(server.pid) - rss_before
    assert growth_kib < 8 * 1024, f"the server grew by {growth_kib} KiB"
    assert server.blob_files() == blobs_before
    assert _job_count(server) == jobs_before


def test_hostile_file_names_are_labels_only(server: Server) -> None:
    names = {
        "dots": "../../../../etc/passwd.png",
        "backslash": "..\\..\\windows\\system32\\evil.png",
        "nul": "inno\x00cent.png\x00.sh",
        "control": "bell\x07\x1b[31mred.png",
        "long": "L" * 20000 + ".png",
        "unicode": "\u202egnp.exe",
    }
    blobs_before = set(server.blob_files())
    accepted = set()
    for label, filename in names.items():
        body = _multipart([("image", filename, PNG)])
        response = send(server.url, "POST", JOBS, _headers(server.user), [body])
        assert response.status in (202, 400, 413, 422), (label, response.status, response.body[:300])
        if response.status != 202:
            assert json.loads(response.body)["error"]["code"], response.body[:300]
            continue
        accepted.add(label)
        [view] = response.json()["inputs"]
        shown = view["filename"]
        if shown is not None:
            assert len(shown) <= 255, (label, len(shown))
            assert "/" not in shown and "\\" not in shown and ".." not in shown, (label, shown)
            assert all(ch.isprintable() and ord(ch) < 0x7F for ch in shown), (label, shown)
            assert "\x00" not in shown
    # The point is to store them safely, not to refuse them all.
    assert {"dots", "backslash", "nul", "control"} <= accepted, accepted
    added = set(server.blob_files()) - blobs_before
    assert len(added) == len(accepted)
    for path in added:
        # Stored under generated keys inside the blob folder, never a name taken from the client.
        assert path.resolve().is_relative_to(server.blob_root.resolve()), path
        assert path.name.isalnum() and len(path.name) == 32, path
        assert path.read_bytes() == PNG
    assert not list(server.root.parent.glob("**/passwd.png"))


def test_a_lying_content_type_is_refused(server: Server) -> None:
    blobs_before, jobs_before = server.blob_files(), _job_count(server)
    for filename in ("cat.png", "cat.jpg"):
        body = _multipart([("image", filename, ELF)])  # the part claims image/png
        response = send(server.url, "POST", JOBS, _headers(server.user), [body])
        assert response.status == 415, response.body[:300]
        assert response.json()["error"]["code"] == "unsupported_media_type"
        assert "octet-stream" in response.json()["error"]["message"]
    assert server.blob_files() == blobs_before
    assert _job_count(server) == jobs_before


@pytest.mark.parametrize("kind", ["files", "fields"])
def test_thousands_of_parts_are_refused_fast(server: Server, kind: str) -> None:
    blobs_before, jobs_before = server.blob_files(), _job_count(server)
    parts = bytearray(_part_head("spec") + SPEC.encode() + b"\r\n")
    for i in range(4000):
        parts += _part_head(f"p{i}", "x.png" if kind == "files" else None) + b"x\r\n"
    parts += f"--{BOUNDARY}--\r\n".encode()
    assert len(parts) < MAX_REQUEST
    started = time.monotonic()
    response = send(server.url, "POST", JOBS, _headers(server.user), [bytes(parts)])
    elapsed = time.monotonic() - started
    assert response.status in (400, 413, 422), (response.status, response.body[:300])
    error = response.json()["error"]
    assert error["code"] and "too many" in error["message"].lower(), error
    assert elapsed < 2, elapsed
    assert server.blob_files() == blobs_before
    assert _job_count(server) == jobs_before


def test_a_truncated_multipart_body_is_refused(api: Api) -> None:
    full = _multipart([("image", "a.png", PNG)])
    for cut in (10, 300):  # the closing boundary lost; the file itself cut short
        response = api.post(
            JOBS,
            token=api.user,
            content=full[:-cut],
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert response.status_code in (400, 422), (cut, response.status_code, response.text[:300])
    assert api.get(JOBS, token=api.user).json()["jobs"] == []
