"""Images whose headers lie, and valid ones that look hostile, made with Pillow at test time."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _jpeg(size: tuple[int, int], **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the first scan's data."""
    found = []
    at = 2
    while True:
        marker = data[at + 1]
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        found.append((marker, at, at + 2 + length))
        if marker == 0xDA:
            return found
        at += 2 + length


def lying_jpeg(
    size: tuple[int, int] = (8000, 5000), progressive: bool = False, end: bool = True
) -> bytes:
    """A real JPEG's tables and scan header under a frame of ``size``, then a few bytes of data.

    With ``end`` the data is followed by an end-of-image marker, which libjpeg
    answers by decoding the whole frame from zero bits.
    """
    data = _jpeg((64, 48), progressive=progressive)
    segments = _segments(data)
    for marker, start, _ in segments:
        if marker in (0xC0, 0xC2):
            data = data[: start + 5] + struct.pack(">HH", size[1], size[0]) + data[start + 9 :]
    scan_data = segments[-1][2]
    return data[: scan_data + 64] + (b"\xff\xd9" if end else b"")


def jpeg_with_metadata(nbytes: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A valid JPEG with ``nbytes`` of APP1/APP13 metadata segments before its frame."""
    data = _jpeg(size)
    segments = []
    left = nbytes
    while left > 0:
        body = b"filesvc-test\0" + b"m" * min(left, 65000)
        segments.append(b"\xff\xed" + struct.pack(">H", len(body) + 2) + body)
        left -= len(body) + 4
    return data[:2] + b"".join(segments) + data[2:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def lying_png(size: tuple[int, int] = (8000, 5000), rows: int = 2) -> bytes:
    """An RGB PNG declaring ``size`` whose compressed data holds ``rows`` complete rows, then ends.

    Pillow accepts it and leaves the rest of the bitmap blank.
    """
    width, height = size
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = (b"\0" + b"\x80" * (width * 3)) * rows
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def flat_png(size: tuple[int, int]) -> bytes:
    """A valid, highly compressible RGB PNG: little data, a big bitmap."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def png_with_text(nbytes: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A valid PNG carrying ``nbytes`` of tEXt chunks before its image data."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, "PNG")
    data = buffer.getvalue()
    chunks = []
    for index in range(0, nbytes, 60000):
        chunks.append(_png_chunk(b"tEXt", b"k%d\0" % index + b"t" * 60000))
    ihdr_end = 8 + 25
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]
