"""Blobs in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO) through boto3.

boto3 is synchronous: the async method runs each network call in a thread. One client is made per store
and shared, as botocore clients are thread-safe (sessions are not, hence a private session).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from jobmill.storage.base import (
    BlobInfo,
    BlobNotFound,
    StorageError,
    StorageUnavailable,
    StreamMeter,
    check_key,
    check_prefix,
    content_disposition,
    replacing,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, ObjectIdentifierTypeDef

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024  # S3 wants parts of at least 5 MiB except the last; 8 MiB is boto3's default
SPOOL_IN_MEMORY = 1024 * 1024  # beyond this a part being gathered spills to a temporary file
READ_CHUNK = 1024 * 1024
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer than a week
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_UNAVAILABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        addressing_style: str | None = None,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        url: str | None = None,
    ) -> None:
        self.bucket = bucket
        stripped = prefix.strip("/")
        self.prefix = f"{stripped}/" if stripped else ""
        self.url = url or f"s3://{bucket}/{stripped}"
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            # Custom endpoints (MinIO, moto, most self-hosted S3) rarely have wildcard DNS for
            # bucket.host names, so path-style addressing is the safe default there.
            "s3": {"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            # botocore >= 1.36 adds CRC checksums to every upload by default, which several S3-compatible
            # services reject; only send them where the API requires one.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        session = boto3.session.Session()
        self._client: S3Client = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=Config(**options)
        )

    # -- writing --------------------------------------------------------------------------------

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> BlobInfo:
        upload = _Upload(self._client, self.bucket, self._full_key(key), key, content_type)
        meter = StreamMeter(max_bytes)
        try:
            async for chunk in chunks:
                meter.add(chunk)
                upload.write(chunk)
                if upload.part_ready:
                    await asyncio.to_thread(upload.send_part)
            await asyncio.to_thread(upload.finish)
        except BaseException:
            # Awaited even when the task is being cancelled: abort waits for an in-flight part (which
            # keeps running in its thread) and then removes the multipart upload and its parts.
            await asyncio.to_thread(upload.abort)
            raise
        finally:
            upload.close()
        return BlobInfo(key=key, size=meter.size, sha256=meter.hexdigest(), content_type=content_type)

    def put_file(self, key: str, path: Path, *, content_type: str) -> BlobInfo:
        upload = _Upload(self._client, self.bucket, self._full_key(key), key, content_type)
        meter = StreamMeter()
        try:
            with path.open("rb") as src:
                while chunk := src.read(READ_CHUNK):
                    meter.add(chunk)
                    upload.write(chunk)
                    if upload.part_ready:
                        upload.send_part()
            upload.finish()
        except BaseException:
            upload.abort()
            raise
        finally:
            upload.close()
        return BlobInfo(key=key, size=meter.size, sha256=meter.hexdigest(), content_type=content_type)

    # -- reading --------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        with _translated(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._full_key(key))
        return io.BufferedReader(_BodyReader(response["Body"], key), buffer_size=READ_CHUNK)

    def download_to(self, key: str, path: Path) -> None:
        # One streaming GET rather than boto3's download_file: no HEAD first, no thread pool per call.
        with self.open(key) as src, replacing(path) as out:
            shutil.copyfileobj(src, out, READ_CHUNK)

    def exists(self, key: str) -> bool:
        try:
            with _translated(key):
                self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except BlobNotFound:
            return False
        return True

    # -- deleting -------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        with _translated(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        deleted = 0
        with _translated(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                # A listing page holds at most 1000 keys, which is also delete_objects' limit.
                objects: list[ObjectIdentifierTypeDef] = [
                    {"Key": obj["Key"]} for obj in page.get("Contents", [])
                ]
                if not objects:
                    continue
                result = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                errors = result.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageError(
                        f"could not delete {len(errors)} blobs under {prefix!r}, "
                        f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
                deleted += len(objects)
        return deleted

    # -- signed URLs ----------------------------------------------------------------------------

    def signed_url(self, key: str, *, expires_s: int, filename: str | None = None, base_url: str = "") -> str:
        """A presigned GET; `base_url` is not used, as the URL points at the bucket itself."""
        if not 0 < expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be between 1 and {MAX_PRESIGN_S}")
        params: dict[str, str] = {"Bucket": self.bucket, "Key": self._full_key(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        with _translated(key):
            return self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)

    def close(self) -> None:
        self._client.close()

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)


class _Upload:
    """One object being written: a single PUT while it fits in one part, a multipart upload beyond.

    Bytes are gathered in a spool until a part is full, so memory stays at SPOOL_IN_MEMORY whatever the
    size. A lock serialises the network calls so that `abort` waits for a part still in flight: a part
    that finished uploading after the abort would otherwise keep the upload (and its storage) alive.
    """

    def __init__(self, client: S3Client, bucket: str, full_key: str, key: str, content_type: str) -> None:
        self._client = client
        self._bucket = bucket
        self._full_key = full_key
        self._key = key
        self._content_type = content_type
        self._spool = _new_spool()
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        self._spool.write(data)
        self._buffered += len(data)

    @property
    def part_ready(self) -> bool:
        return self._buffered >= PART_SIZE

    def send_part(self) -> None:
        with self._lock, _translated(self._key):
            if self._upload_id is None:
                created = self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._full_key, ContentType=self._content_type
                )
                self._upload_id = created["UploadId"]
            self._upload_buffered_part(self._upload_id)

    def finish(self) -> None:
        with self._lock, _translated(self._key):
            if self._upload_id is None:
                self._spool.seek(0)
                self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._full_key,
                    Body=self._spool,
                    ContentLength=self._buffered,
                    ContentType=self._content_type,
                )
                return
            if self._buffered:
                self._upload_buffered_part(self._upload_id)
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._full_key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None  # completed: nothing left to abort

    def abort(self) -> None:
        with self._lock:
            if self._upload_id is None:
                return  # nothing was sent, or the object is complete
            try:
                with _translated(self._key):
                    self._client.abort_multipart_upload(
                        Bucket=self._bucket, Key=self._full_key, UploadId=self._upload_id
                    )
            except StorageError:
                # The original error is the one worth raising; a bucket lifecycle rule for incomplete
                # multipart uploads is the backstop for the parts left behind here.
                log.warning("could not abort multipart upload %s of %s", self._upload_id, self._full_key)
            self._upload_id = None

    def close(self) -> None:
        self._spool.close()

    def _upload_buffered_part(self, upload_id: str) -> None:
        number = len(self._parts) + 1
        self._spool.seek(0)
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._full_key,
            UploadId=upload_id,
            PartNumber=number,
            Body=self._spool,
            ContentLength=self._buffered,
        )
        part: CompletedPartTypeDef = {"ETag": response["ETag"], "PartNumber": number}
        # When checksums were sent, completing the upload must repeat them per part.
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
            if name in response:
                part[name] = response[name]
        self._parts.append(part)
        self._spool.close()
        self._spool = _new_spool()
        self._buffered = 0


def _new_spool() -> SpooledTemporaryFile[bytes]:
    return SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b")


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, with network errors translated on every read."""

    def __init__(self, body: StreamingBody, key: str) -> None:
        self._body = body
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _translated(self._key):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    """botocore's errors as jobmill's: callers handle StorageError, never botocore types."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND_CODES:
            raise BlobNotFound(key) from exc
        if status >= 500 or code in _UNAVAILABLE_CODES:
            raise StorageUnavailable(f"S3 is not available: {code} {error.get('Message', '')}") from exc
        raise StorageError(f"S3 refused the request for {key!r}: {code} {error.get('Message', '')}") from exc
    except (BotoConnectionError, HTTPClientError, IncompleteReadError) as exc:
        raise StorageUnavailable(f"S3 cannot be reached: {exc}") from exc
    except NoCredentialsError as exc:
        raise StorageError("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from exc
    except BotoCoreError as exc:
        raise StorageError(f"S3 request failed: {exc}") from exc
