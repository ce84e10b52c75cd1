"""Raw HTTP/1.1 over a socket: bodies sent in chunks with pauses, as a slow or hostile client would."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.security.conftest import CASES


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float
    sent_bytes: int = 0  # of the body, before the server answered (or all of it)

    def json(self) -> Any:
        return json.loads(self.body)


def rss_kib(pid: int) -> int:
    """The resident set size of a process, from /proc/<pid>/status (VmRSS, in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def send(
    url: str,
    method: str,
    path: str,
    headers: dict[str, str],
    chunks: Iterable[bytes],
    *,
    pause_s: float = 0.0,
    chunked: bool = True,
    timeout_s: float = 20.0,
) -> RawResponse:
    """Send a request whose body is `chunks` (Transfer-Encoding: chunked unless `chunked` is False, then
    the caller gives Content-Length), pausing between chunks. The server may answer (and close) before the
    body is all sent: sending stops there, and its answer is returned."""
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s) as s:
        head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        if chunked:
            head.append("Transfer-Encoding: chunked")
        head += [f"{name}: {value}" for name, value in headers.items()]
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        sent = 0
        try:
            for chunk in chunks:
                sent += len(chunk)
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if pause_s:
                    time.sleep(pause_s)
                if _answered(s):
                    break
            else:
                if chunked:
                    s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        raw = _read_all(s)
    try:
        response = _parse(raw, time.monotonic() - started)
    except Exception:
        CASES.request(None)
        raise
    CASES.request(response.status)
    response.sent_bytes = sent
    return response


def _answered(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return bool(s.recv(1, socket.MSG_PEEK))
    except (BlockingIOError, InterruptedError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.setblocking(True)


def _read_all(s: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            piece = s.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return bytes(data)


def _parse(raw: bytes, elapsed_s: float) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1.1 "), f"no HTTP answer: {raw[:200]!r}"
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body, elapsed_s)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)
