"""The streaming image probe, fed the way the upload pipeline feeds it."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pytest
from PIL import Image

from filesvc.decoding import DecodeBudget, DecodeBudgetExhausted
from filesvc.errors import InvalidContent
from filesvc.imaging import ImageProbe
from tests.hostile_images import (
    flat_png,
    jpeg_with_metadata,
    lying_jpeg,
    lying_png,
    png_with_text,
)
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


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("end", [True, False])
def test_jpeg_whose_data_cannot_fill_its_frame_is_refused(progressive: bool, end: bool) -> None:
    # With an end-of-image marker, libjpeg would decode all 40 Mpx from zero bits.
    with pytest.raises(InvalidContent, match="cannot fill its 8000×5000 pixels"):
        probe("image/jpeg", lying_jpeg(progressive=progressive, end=end))


@pytest.mark.parametrize("rows", [1, 40])
def test_png_with_complete_rows_but_too_few_of_them_is_refused(rows: int) -> None:
    # Pillow itself accepts this, leaving the missing rows blank.
    with pytest.raises(InvalidContent, match="cannot fill its 8000×5000 pixels"):
        probe("image/png", lying_png(rows=rows))


def test_interlaced_png_is_accepted() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (97, 61), (1, 2, 3)).save(buffer, "PNG", interlace=True)
    assert probe("image/png", buffer.getvalue(), chunk=50) == (97, 61)


def test_big_but_complete_flat_png_is_accepted() -> None:
    assert probe("image/png", flat_png((3000, 2000))) == (3000, 2000)


def test_jpeg_with_megabytes_of_metadata_is_accepted_without_holding_it() -> None:
    data = jpeg_with_metadata(8 * 1024 * 1024)
    tracemalloc.start()
    try:
        assert probe("image/jpeg", data, chunk=256 * 1024) == (320, 240)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The chunks in flight and the stream's window, not the 8 MiB of metadata.
    assert peak < 4 * 1024 * 1024


def test_png_text_chunks_are_skipped_unread() -> None:
    data = png_with_text(8 * 1024 * 1024)
    tracemalloc.start()
    try:
        assert probe("image/png", data, chunk=256 * 1024) == (64, 48)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_arithmetic_coded_jpeg_is_refused() -> None:
    data = make_image("image/jpeg")
    at = data.index(b"\xff\xc0")
    with pytest.raises(InvalidContent, match="Arithmetic-coded"):
        probe("image/jpeg", data[:at] + b"\xff\xc9" + data[at + 2 :])


def test_webp_shorter_than_its_riff_size_is_refused_before_decoding() -> None:
    data = make_image("image/webp", size=(300, 200), noise=True)
    with pytest.raises(InvalidContent, match="shorter than its RIFF header says"):
        probe("image/webp", data[: len(data) - 10])


def test_webp_reserves_its_canvases_before_libwebp_allocates_them() -> None:
    data = make_image("image/webp", size=(1000, 1000))
    budget = DecodeBudget(8 * 1024 * 1024, 0)  # less than libwebp's two 4 MB canvases and more
    image_probe = ImageProbe("image/webp", 10**8, budget)
    image_probe.feed(data)
    with pytest.raises(InvalidContent, match="more than the limit"):
        image_probe.finish()


def test_a_full_budget_refuses_the_decode_with_503() -> None:
    budget = DecodeBudget(8 * 1024 * 1024, 0)
    with budget.reserve(7 * 1024 * 1024):
        image_probe = ImageProbe("image/png", 10**8, budget)
        image_probe.feed(make_image("image/png", size=(1000, 1000)))
        with pytest.raises(DecodeBudgetExhausted):
            image_probe.finish()
    assert budget.in_use == 0
    assert probe("image/png", make_image("image/png", size=(1000, 1000))) == (1000, 1000)


def test_the_decode_holds_its_reservation_only_while_decoding() -> None:
    seen: list[int] = []
    budget = DecodeBudget(64 * 1024 * 1024, 0, on_change=seen.append)
    image_probe = ImageProbe("image/png", 10**8, budget)
    image_probe.feed(make_image("image/png", size=(1000, 1000)))
    assert image_probe.finish() == (1000, 1000)
    # It grows with the rows the data fills, to the whole bitmap (RGB is 4 bytes a
    # pixel in Pillow) and the decoder's rows and tables; then it is given back.
    assert seen == sorted(seen[:-1]) + [0]
    assert seen[-2] > 4_000_000


def test_a_png_reservation_grows_with_its_data_not_its_header() -> None:
    seen: list[int] = []
    budget = DecodeBudget(256 * 1024 * 1024, 0, on_change=seen.append)
    image_probe = ImageProbe("image/png", 10**8, budget)
    image_probe.feed(lying_png(rows=2))  # the header promises 160 MB of bitmap
    with pytest.raises(InvalidContent, match="cannot fill"):
        image_probe.finish()
    assert 0 < max(seen) < 8 * 1024 * 1024
    assert budget.in_use == 0


def test_a_png_that_needs_more_than_the_budget_is_refused_at_once() -> None:
    budget = DecodeBudget(64 * 1024 * 1024, 3600)
    image_probe = ImageProbe("image/png", 10**8, budget)
    image_probe.feed(lying_png(rows=2))
    with pytest.raises(InvalidContent, match="more than the limit"):
        image_probe.finish()


def test_importing_imaging_leaves_the_warnings_filter_alone() -> None:
    code = (
        "import warnings; before = list(warnings.filters); "
        "import filesvc.imaging, filesvc.pipeline; "
        "assert warnings.filters == before, warnings.filters[:3]"
    )
    subprocess.run([sys.executable, "-W", "default", "-c", code], check=True)


def test_jpeg_with_stray_bytes_between_segments_is_accepted() -> None:
    data = make_image("image/jpeg", size=(97, 61))
    at = data.index(b"\xff\xdb")  # before the first quantization table
    assert probe("image/jpeg", data[:at] + b"\0\0\0" + data[at:]) == (97, 61)
