"""Blobs as files under one root folder; downloads go through the API's `/files/{token}` route."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from jobmill.errors import ConfigError
from jobmill.storage.base import (
    BlobInfo,
    BlobNotFound,
    InvalidKey,
    StorageError,
    StreamMeter,
    check_key,
    check_prefix,
    replacing,
)
from jobmill.storage.signing import FileGrant, sign_file_token, verify_file_token

COPY_CHUNK = 1024 * 1024
# put_stream hands writes to a thread in batches of this size: one thread hop per network chunk
# (often 64 KiB) would cost more than the write itself.
WRITE_BATCH = 1024 * 1024
# Temporary files start with a character keys may not contain, so they can never be mistaken for (or
# read, listed or deleted as) a blob.
TEMP_PREFIX = "~"


class LocalBlobStore:
    def __init__(self, root: Path | str, *, secret_key: str = "", url: str | None = None) -> None:
        # Resolved once, so the containment check compares like with like even if root is a symlink.
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = url or self.root.as_uri()
        self._secret_key = secret_key

    # -- writing --------------------------------------------------------------------------------

    async def put_stream(
        self, key: str, chunks: AsyncIterator[bytes], *, content_type: str, max_bytes: int | None = None
    ) -> BlobInfo:
        target = self._path(key)
        meter = StreamMeter(max_bytes)
        # Made on the loop thread (a mkdir and an open, both quick) so that a cancellation cannot strike
        # between creating the temporary file and the `try` that removes it.
        writer = _AtomicWriter(target)
        try:
            pending = bytearray()
            async for chunk in chunks:
                meter.add(chunk)
                pending += chunk
                if len(pending) >= WRITE_BATCH:
                    await asyncio.to_thread(writer.write, pending)
                    pending = bytearray()
            if pending:
                await asyncio.to_thread(writer.write, pending)
            await asyncio.to_thread(writer.commit)
        except BaseException:
            # Synchronous on purpose: it must also run while the task is being cancelled.
            writer.discard()
            raise
        return BlobInfo(key=key, size=meter.size, sha256=meter.hexdigest(), content_type=content_type)

    def put_file(self, key: str, path: Path, *, content_type: str) -> BlobInfo:
        target = self._path(key)
        meter = StreamMeter()
        writer = _AtomicWriter(target)
        try:
            with path.open("rb") as src:
                while chunk := src.read(COPY_CHUNK):
                    meter.add(chunk)
                    writer.write(chunk)
            writer.commit()
        except BaseException:
            writer.discard()
            raise
        return BlobInfo(key=key, size=meter.size, sha256=meter.hexdigest(), content_type=content_type)

    # -- reading --------------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise StorageError(f"cannot read blob {key!r}: {exc}") from exc

    def download_to(self, key: str, path: Path) -> None:
        with self.open(key) as src:
            try:
                with replacing(path) as out:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
            except OSError as exc:
                raise StorageError(f"cannot copy blob {key!r} to {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def path_of(self, key: str) -> Path:
        """The file holding `key`, for servers that send files themselves (ranges, sendfile)."""
        path = self._path(key)
        if not path.is_file():
            raise BlobNotFound(key)
        return path

    # -- deleting -------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            # `key` names a folder of other blobs, or a folder on its path is a file: either way no blob
            # of that key exists.
            return
        except OSError as exc:
            raise StorageError(f"cannot delete blob {key!r}: {exc}") from exc
        self._prune(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix)
        # Only the folder of the prefix's complete segments can hold matching keys; walk just that.
        folder = self._contained(self.root / prefix.rpartition("/")[0])
        deleted = 0
        touched: set[Path] = set()
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue  # an upload in progress: its writer renames or removes it
                file = Path(dirpath, name)
                if file.relative_to(self.root).as_posix().startswith(prefix):
                    try:
                        file.unlink()
                    except FileNotFoundError:
                        continue  # deleted concurrently: not ours to count
                    except OSError as exc:
                        raise StorageError(f"cannot delete blob {name!r}: {exc}") from exc
                    deleted += 1
                    touched.add(file.parent)
        for parent in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            self._prune(parent)
        return deleted

    # -- signed URLs ----------------------------------------------------------------------------

    def signed_url(self, key: str, *, expires_s: int, filename: str | None = None, base_url: str = "") -> str:
        check_key(key)
        if expires_s <= 0:
            raise ValueError("expires_s must be positive")
        if not self._secret_key:
            raise ConfigError("the local blob store needs a secret key to sign URLs: set JOBMILL_SECRET_KEY")
        token = sign_file_token(self._secret_key, key, filename, int(time.time()) + expires_s)
        return f"{base_url.rstrip('/')}/files/{token}"

    def verify_token(self, token: str, *, now: float | None = None) -> FileGrant:
        """What a `/files/{token}` URL grants; InvalidSignature if tampered, malformed or expired."""
        if not self._secret_key:
            raise ConfigError("the local blob store needs a secret key to sign URLs: set JOBMILL_SECRET_KEY")
        return verify_file_token(self._secret_key, token, now)

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # -- helpers --------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        check_key(key)
        return self._contained(self.root / key)

    def _contained(self, path: Path) -> Path:
        # check_key already rules out `..` and absolute keys; this also catches symlinks planted inside
        # the root that point elsewhere.
        resolved = path.resolve()
        if resolved != self.root and not resolved.is_relative_to(self.root):
            raise InvalidKey(f"{path} resolves outside the blob root")
        return resolved

    def _prune(self, folder: Path) -> None:
        """Remove `folder` and its parents while they are empty, so deleted jobs leave no folders."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return  # not empty (or already gone): stop climbing
            folder = folder.parent


class _AtomicWriter:
    """A temporary file beside the target, renamed over it once complete and synced to disk."""

    def __init__(self, target: Path) -> None:
        self.target = target
        try:
            fd, name = self._create_temp()
        except OSError as exc:
            raise StorageError(f"cannot write under {target.parent}: {exc}") from exc
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _create_temp(self) -> tuple[int, str]:
        retries = 2
        while True:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(
                    dir=self.target.parent, prefix=f"{TEMP_PREFIX}{self.target.name}.", suffix=".part"
                )
            except FileNotFoundError:
                # A concurrent delete pruned the empty folder between mkdir and mkstemp: make it again.
                if not retries:
                    raise
                retries -= 1

    def write(self, data: bytes | bytearray) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.target}: {exc}") from exc

    def commit(self) -> None:
        # fsync before the rename: after a crash the key must hold the whole blob or nothing, since the
        # database may already point at it.
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.target)
        except OSError as exc:
            raise StorageError(f"cannot write {self.target}: {exc}") from exc
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        # Called while another error propagates, so it never raises one of its own (which would replace
        # the StorageError with a bare OSError). Closing flushes, which fails if the disk filled up; the
        # unlink fails if the folder was removed or replaced meanwhile: either way nothing is left.
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
