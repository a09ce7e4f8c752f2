"""Content-type detection from a file's first bytes (magic numbers).

The client's ``Content-Type`` header and file name are never consulted: only
these signatures decide what a file is. The table is short on purpose; an
operator can allow only what is listed here, so start-up refuses anything else.
"""

from __future__ import annotations

#: How many leading bytes :func:`detect` needs to decide.
SNIFF_BYTES = 16

#: Types whose content Pillow must decode before the upload is accepted.
RASTER_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)

#: Pillow's format name for each raster type: a decoded image must match it.
PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
)

DETECTABLE_TYPES = frozenset(t for _, t in _SIGNATURES) | {"image/webp"}


def detect(head: bytes) -> str | None:
    """The content type that ``head`` (a file's first bytes) proves, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for signature, content_type in _SIGNATURES:
        if head.startswith(signature):
            return content_type
    return None
