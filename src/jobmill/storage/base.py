"""The BlobStore protocol, what it returns, and the errors every backend raises.

Keys are made by jobmill (`new_key`), never taken from user file names: a user-chosen name could
collide with another tenant's blob, escape a folder, or carry characters a backend treats specially.

StorageError                any failure of the backend itself: a disk that cannot be written, S3 refusing
│                           (API: 503, like the subclasses not named below)
├── StorageUnavailable      the backend cannot be reached right now (API: 503)
├── BlobNotFound            no blob under that key
├── UploadTooLarge          more than the allowed bytes arrived (API: 413); carries `limit`
├── UnsupportedMediaType    the sniffed type is not allowed (API: 415); carries `content_type`
├── InvalidSignature        a signed URL token was tampered with, malformed or expired (API: 403)
└── InvalidKey              a key or prefix that jobmill would never generate (a bug, not a user error;
                            API: 500)
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote

from jobmill.errors import JobmillError

_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PARTIAL_SEGMENT = re.compile(r"[A-Za-z0-9._-]{0,128}")
MAX_KEY_LENGTH = 1024  # S3's limit; keeping every backend to it keeps keys portable between them


class StorageError(JobmillError):
    pass


class StorageUnavailable(StorageError):
    pass


class BlobNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no blob with key {key!r}")
        self.key = key


class UploadTooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


class UnsupportedMediaType(StorageError):
    def __init__(self, content_type: str) -> None:
        super().__init__(f"files of type {content_type} are not accepted")
        self.content_type = content_type


class InvalidSignature(StorageError):
    pass


class InvalidKey(StorageError, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str  # lowercase hex
    content_type: str


class BlobStore(Protocol):
    """Where uploaded inputs and job outputs live. Implementations are safe to share between threads."""

    url: str

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> BlobInfo:
        """Stream `chunks` into `key`, hashing as they go; on UploadTooLarge or any error, store nothing."""
        ...

    def put_file(self, key: str, path: Path, *, content_type: str) -> BlobInfo: ...

    def download_to(self, key: str, path: Path) -> None:
        """Copy the blob to `path` (replaced whole, never left half written); BlobNotFound if missing."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A read stream over the blob; the caller closes it. BlobNotFound if missing."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; removing a missing blob is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every blob whose key starts with `prefix` (a plain string prefix, as in S3)."""
        ...

    def exists(self, key: str) -> bool: ...

    def signed_url(self, key: str, *, expires_s: int, filename: str | None = None, base_url: str = "") -> str:
        """A URL that downloads the blob without other credentials until `expires_s` seconds from now."""
        ...

    def close(self) -> None: ...


def new_key(tenant: str, *parts: str) -> str:
    """`tenant/part/.../<uuid4 hex>`: the random last segment makes every key unique and unguessable."""
    for part in (tenant, *parts):
        _check_segment(part)
    return "/".join((tenant, *parts, uuid.uuid4().hex))


def check_key(key: str) -> str:
    """Refuse keys `new_key` could not have made, so no backend ever sees `..`, `/x` or odd characters."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"a key has 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")
    for segment in key.split("/"):
        _check_segment(segment)
    return key


def check_prefix(prefix: str) -> str:
    """Like check_key, but the last segment may be partial or empty (`tenant/job-1/`, `tenant/job-`).

    An empty prefix is refused: it would select every blob of every tenant.
    """
    if not prefix or len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKey(f"a prefix has 1 to {MAX_KEY_LENGTH} characters, got {len(prefix)}")
    *whole, last = prefix.split("/")
    for segment in whole:
        _check_segment(segment)
    if not _PARTIAL_SEGMENT.fullmatch(last):
        raise InvalidKey(f"invalid key prefix {prefix!r}")
    return prefix


def _check_segment(segment: str) -> None:
    if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
        raise InvalidKey(f"invalid key segment {segment!r}: use 1-128 of A-Z a-z 0-9 . _ - (not . or ..)")


class StreamMeter:
    """Size and sha256 of a stream, and its byte limit, checked before a chunk is accepted."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._hash = hashlib.sha256()

    def add(self, chunk: bytes) -> None:
        if self.max_bytes is not None and self.size + len(chunk) > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        self.size += len(chunk)
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def content_disposition(filename: str) -> str:
    """An `attachment` Content-Disposition for a user-supplied file name, safe to put in a header.

    Quotes, backslashes, slashes and control characters are dropped so the name cannot end the quoted
    string or smuggle a header; the exact name travels percent-encoded in `filename*` (RFC 6266).
    """
    cleaned = "".join(ch for ch in filename if ch.isprintable() and ch not in '"\\/').strip()[:255]
    cleaned = cleaned or "download"
    fallback = "".join(ch if " " <= ch <= "~" else "_" for ch in cleaned)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(cleaned, safe='')}"


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `path` that replaces it when the block succeeds and vanishes if it fails.

    Readers of `path` therefore see the old content or the whole new one, never a partial download.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
