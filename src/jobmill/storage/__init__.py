"""Blob storage: uploaded inputs and job outputs, on local disk or in an S3-compatible bucket."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from jobmill.errors import ConfigError
from jobmill.storage.base import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    InvalidKey,
    InvalidSignature,
    StorageError,
    StorageUnavailable,
    UnsupportedMediaType,
    UploadTooLarge,
    new_key,
)
from jobmill.storage.local import LocalBlobStore
from jobmill.storage.sniff import DEFAULT_ALLOWED_TYPES, sniff_content_type
from jobmill.storage.uploads import store_upload

if TYPE_CHECKING:
    from jobmill.storage.s3 import S3BlobStore

__all__ = [
    "DEFAULT_ALLOWED_TYPES",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "InvalidKey",
    "InvalidSignature",
    "LocalBlobStore",
    "S3BlobStore",
    "StorageError",
    "StorageUnavailable",
    "UnsupportedMediaType",
    "UploadTooLarge",
    "new_key",
    "open_blobstore",
    "sniff_content_type",
    "store_upload",
]

# S3's own rules (3-63 of lowercase letters, digits, dots and hyphens); R2 and MinIO follow them.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_OPTIONS = frozenset(
    {"endpoint_url", "region", "addressing_style", "max_attempts", "connect_timeout", "read_timeout"}
)


def open_blobstore(url: str, *, secret_key: str) -> BlobStore:
    """The store a storage URL names.

    `file://./var/blobs` (relative to the working folder) or `file:///abs/path`: local disk.
    `s3://bucket/prefix?endpoint_url=http://host:9000&region=us-east-1`: S3 or a compatible service,
    with credentials from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles...).
    Further S3 options: addressing_style (path|virtual|auto), max_attempts, connect_timeout, read_timeout.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "file":
        return _open_local(url, secret_key)
    if scheme == "s3":
        return _open_s3(url)
    raise ConfigError(f"unsupported storage URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")


def _open_local(url: str, secret_key: str) -> LocalBlobStore:
    # Everything after file:// is the path, so file://./var/blobs is relative and file:///srv/blobs is
    # absolute (urlsplit would read the "." as a host name).
    raw = url[len("file://") :]
    if "?" in raw or "#" in raw:
        raise ConfigError(f"a file:// storage URL takes no query or fragment: {url!r}")
    if raw.startswith("localhost/"):  # file://localhost/srv/blobs is /srv/blobs (RFC 8089)
        raw = raw[len("localhost") :]
    if not raw:
        raise ConfigError(f"the storage URL {url!r} names no folder")
    return LocalBlobStore(Path(unquote(raw)), secret_key=secret_key, url=url)


def __getattr__(name: str) -> object:
    # boto3 takes ~200 ms to import: only deployments that use S3 pay for it (and CLI start-up does not).
    if name == "S3BlobStore":
        from jobmill.storage.s3 import S3BlobStore

        return S3BlobStore
    raise AttributeError(name)


def _open_s3(url: str) -> S3BlobStore:
    parts = urlsplit(url)
    bucket = parts.netloc  # not .hostname, which would lowercase an invalid name into a valid one
    if "@" in bucket or ":" in bucket:
        raise ConfigError("an s3:// URL holds no credentials or port: use endpoint_url and AWS_* variables")
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(f"invalid S3 bucket name {bucket!r} in the storage URL")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(f"malformed query in the storage URL {url!r}") from exc
    unknown = set(query) - _S3_OPTIONS
    if unknown:
        raise ConfigError(f"unknown S3 storage options {sorted(unknown)}; known: {sorted(_S3_OPTIONS)}")
    options: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"the S3 storage option {name} needs exactly one value")
        options[name] = values[0]
    style = options.get("addressing_style")
    if style not in (None, "path", "virtual", "auto"):
        raise ConfigError(f"addressing_style must be path, virtual or auto, not {style!r}")
    try:
        max_attempts = int(options.get("max_attempts", "3"))
        connect_timeout = float(options.get("connect_timeout", "5"))
        read_timeout = float(options.get("read_timeout", "60"))
    except ValueError as exc:
        raise ConfigError(f"invalid number in the storage URL {url!r}") from exc
    if max_attempts < 1 or connect_timeout <= 0 or read_timeout <= 0:
        raise ConfigError("max_attempts must be at least 1 and timeouts positive")
    from jobmill.storage.s3 import S3BlobStore

    return S3BlobStore(
        bucket,
        unquote(parts.path),
        endpoint_url=options.get("endpoint_url"),
        region=options.get("region", "us-east-1"),
        addressing_style=style,
        max_attempts=max_attempts,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        url=url,
    )
