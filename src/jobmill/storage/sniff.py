"""Content types from magic bytes: what a file is, whatever its name or the client's header claims."""

from __future__ import annotations

import codecs

# Enough for every signature below, and for a fair guess at whether the start is text.
SNIFF_BYTES = 512

DEFAULT_ALLOWED_TYPES: tuple[str, ...] = (
    # Globs are safe here: sniff_content_type only ever names the types below, never e.g. image/svg+xml.
    "image/*",
    "audio/*",
    "video/*",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/json",
    "text/plain",  # CSV and other text formats are sniffed as text/plain
)

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),  # an empty archive
    (b"PK\x07\x08", "application/zip"),  # a spanned archive
    (b"\x1f\x8b", "application/gzip"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),  # EBML: WebM and Matroska
)

# ISO base media files (ftyp box) are video/mp4 unless their major brand says audio or still image.
_FTYP_BRANDS = {
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",  # audiobook
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"avif": "image/avif",
}


def sniff_content_type(head: bytes) -> str:
    """The content type of a file starting with `head` (pass its first SNIFF_BYTES bytes, or all of it)."""
    for magic, content_type in _PREFIXES:
        if head.startswith(magic):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio frame sync (11 set bits). Layer bits 00 are reserved in MPEG audio and mark ADTS AAC.
        return "audio/aac" if head[1] & 0x06 == 0 else "audio/mpeg"
    text = _as_text(head)
    if text is None:
        return "application/octet-stream"
    if text.lstrip()[:1] in ("{", "["):
        return "application/json"
    return "text/plain"


def _as_text(head: bytes) -> str | None:
    """`head` decoded as UTF-8 (without a BOM), or None if it is binary."""
    if b"\x00" in head:
        return None
    # Incremental: `head` may end in the middle of a multi-byte character, which is not an error.
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(head, final=False)
    except UnicodeDecodeError:
        return None
    return text.removeprefix("\ufeff")
