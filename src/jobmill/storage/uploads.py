"""Accepting a user's upload: type it by content, refuse what is not allowed, store it within a limit."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Collection

from jobmill.storage.base import BlobInfo, BlobStore, UnsupportedMediaType, UploadTooLarge
from jobmill.storage.sniff import SNIFF_BYTES, sniff_content_type


async def store_upload(
    store: BlobStore,
    key: str,
    chunks: AsyncIterator[bytes],
    *,
    max_bytes: int,
    allowed_types: Collection[str],
) -> BlobInfo:
    """Store `chunks` under `key` as their sniffed content type.

    UnsupportedMediaType is raised before anything is written; UploadTooLarge as soon as more than
    `max_bytes` arrived, with nothing left behind. Only the first SNIFF_BYTES (and the chunk that
    crosses them) are held in memory.
    """
    if isinstance(allowed_types, str):  # a lone "image/png" would be read as a set of characters
        raise TypeError("allowed_types is a collection of content types, not one string")
    head: list[bytes] = []  # the chunks read to sniff, replayed into the store afterwards
    sniffed = bytearray()
    received = 0
    while len(sniffed) < SNIFF_BYTES:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        head.append(chunk)
        sniffed += chunk[: SNIFF_BYTES - len(sniffed)]
        received += len(chunk)
        if received > max_bytes:
            raise UploadTooLarge(max_bytes)
    content_type = sniff_content_type(bytes(sniffed))
    if not is_allowed_type(content_type, allowed_types):
        raise UnsupportedMediaType(content_type)

    async def replay() -> AsyncGenerator[bytes, None]:
        for buffered in head:
            yield buffered
        async for rest in chunks:
            yield rest

    body = replay()
    try:
        return await store.put_stream(key, body, content_type=content_type, max_bytes=max_bytes)
    finally:
        # put_stream stops reading early on UploadTooLarge; close the generator now rather than at
        # garbage collection, which may come after the event loop is gone.
        await body.aclose()


def is_allowed_type(content_type: str, allowed_types: Collection[str]) -> bool:
    """Whether `content_type` matches an entry: exactly, by a `type/*` glob, or by `*/*`."""
    content_type = content_type.lower()
    major = content_type.partition("/")[0]
    for allowed in allowed_types:
        allowed = allowed.strip().lower()
        if allowed in (content_type, "*/*") or allowed == f"{major}/*":
            return True
    return False
