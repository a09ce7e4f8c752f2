"""Real image files made with Pillow at test time."""

from __future__ import annotations

import io
import os
import struct
import zlib

from PIL import Image

FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}


def make_image(
    content_type: str = "image/png", size: tuple[int, int] = (64, 48), noise: bool = False
) -> bytes:
    """An image of ``size``; ``noise`` makes it large and incompressible."""
    if noise:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    else:
        image = Image.new("RGB", size, (200, 40, 90))
    buffer = io.BytesIO()
    image.save(buffer, FORMATS[content_type])
    return buffer.getvalue()


def png_of_size(total: int) -> bytes:
    """A valid PNG of exactly ``total`` bytes: a small image padded by a private chunk.

    The chunk is ancillary and safe to copy (``prVt``), so decoders skip it.
    """
    image = make_image("image/png")
    end = image.rindex(b"IEND") - 4  # the IEND chunk starts at its length field
    padding = total - len(image) - 12  # a chunk is length, type, data and CRC
    if padding < 0:
        raise ValueError(f"a PNG is at least {len(image) + 12} bytes here")
    data = b"\0" * padding
    chunk = struct.pack(">I", padding) + b"prVt" + data
    chunk += struct.pack(">I", zlib.crc32(b"prVt" + data))
    return image[:end] + chunk + image[end:]
