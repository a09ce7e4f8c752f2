"""Real image files made with Pillow at test time."""

from __future__ import annotations

import io
import os

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
