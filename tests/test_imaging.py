"""The streaming image probe, fed the way the upload pipeline feeds it."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from filesvc.decoding import DecodeBudget
from filesvc.errors import InvalidContent
from filesvc.imaging import ImageProbe
from tests.images import FORMATS, make_image


def probe(
    content_type: str, data: bytes, chunk: int = 7000, max_pixels: int = 10**8
) -> tuple[int, int]:
    image_probe = ImageProbe(content_type, max_pixels, DecodeBudget(512 * 2**20, 0))
    for start in range(0, len(data), chunk):
        image_probe.feed(data[start : start + chunk])
    return image_probe.finish()


@pytest.mark.parametrize("content_type", sorted(FORMATS))
@pytest.mark.parametrize("chunk", [1, 333, 1024 * 1024])
def test_decodes_every_format_in_any_chunking(content_type: str, chunk: int) -> None:
    data = make_image(content_type, size=(97, 61), noise=chunk != 1)
    assert probe(content_type, data, chunk) == (97, 61)


def test_large_image_decodes_with_head_only_retention() -> None:
    data = make_image("image/jpeg", size=(2500, 1800), noise=True)
    assert len(data) > 2 * 1024 * 1024
    assert probe("image/jpeg", data, 1024 * 1024) == (2500, 1800)


@pytest.mark.parametrize("content_type", sorted(FORMATS))
def test_truncated_images_are_refused(content_type: str) -> None:
    data = make_image(content_type, size=(200, 150), noise=True)
    with pytest.raises(InvalidContent):
        probe(content_type, data[: len(data) // 2])


def test_wrong_format_is_refused() -> None:
    with pytest.raises(InvalidContent):
        probe("image/png", make_image("image/jpeg"))


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_refuses_before_decoding() -> None:
    with pytest.raises(InvalidContent, match="pixels"):
        probe("image/png", _png_header_only(5000, 5000), max_pixels=1_000_000)


def test_decompression_bomb_is_refused() -> None:
    # Far beyond Pillow's own MAX_IMAGE_PIXELS, which raises before our check can.
    with pytest.raises(InvalidContent):
        probe("image/png", _png_header_only(60000, 60000), max_pixels=10**12)


def test_header_that_lies_about_dimensions_is_refused() -> None:
    with pytest.raises(InvalidContent):
        probe("image/png", _png_header_only(4000, 3000))


def test_abandon_lets_the_thread_end() -> None:
    image_probe = ImageProbe("image/png", 10**8, DecodeBudget(2**20, 0))
    image_probe.feed(make_image()[:20])
    image_probe.abandon()
    image_probe._thread.join(timeout=5)
    assert not image_probe._thread.is_alive()


def test_trailing_bytes_after_the_image_are_drained() -> None:
    data = make_image("image/gif") + b"<html><script>alert(1)</script></html>" * 1000
    assert probe("image/gif", data) == (64, 48)
    assert Image.open(io.BytesIO(data)).format == "GIF"
