"""The streaming metadata stripper, on real images made with Pillow, fed in awkward chunks."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageCms, PngImagePlugin

from filesvc.errors import InvalidContent
from filesvc.metadata import MetadataStripper, orientation_of, orientation_tiff

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF>xmp-secret</rdf:RDF></x:xmpmeta>'
SECRETS = (b"GPSsecret", b"xmp-secret", b"comment-secret", b"Canon", b"2024:01:02")
CHUNKINGS = (1, 7, 4096, 1 << 20)


def exif(orientation: int) -> bytes:
    block = Image.Exif()
    block[0x0112] = orientation
    block[0x010F] = "Canon"
    block[0x0132] = "2024:01:02 03:04:05"
    gps = block.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.0)
    gps[27] = b"ASCII\0\0\0GPSsecret"
    return block.tobytes()


def picture(size: tuple[int, int] = (120, 80), mode: str = "RGB") -> Image.Image:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    image.paste((200, 30, 30) if mode == "RGB" else 128, (0, 0, size[0] // 3, size[1]))
    return image


def strip(data: bytes, content_type: str, chunk: int) -> bytes:
    stripper = MetadataStripper.for_type(content_type)
    assert stripper is not None
    out = [stripper.feed(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    out.append(stripper.finish())
    return b"".join(out)


def same_pixels(a: bytes, b: bytes) -> bool:
    first, second = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    if getattr(first, "n_frames", 1) != getattr(second, "n_frames", 1):
        return False
    for frame in range(getattr(first, "n_frames", 1)):
        first.seek(frame)
        second.seek(frame)
        x, y = first.convert("RGBA"), second.convert("RGBA")
        if x.size != y.size or ImageChops.difference(x, y).getbbox() is not None:
            return False
    return True


def assert_clean(data: bytes) -> None:
    for secret in SECRETS:
        assert secret not in data, secret


def jpeg(**extra: Any) -> bytes:
    out = io.BytesIO()
    picture().save(out, "JPEG", quality=90, **extra)
    return out.getvalue()


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg(chunk: int, progressive: bool) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original = jpeg(
        exif=exif(6), xmp=XMP, comment=b"comment-secret", icc_profile=icc, progressive=progressive
    )
    # A second picture after the end marker, as motion photos and MPF files have.
    original += jpeg(exif=exif(1), comment=b"comment-secret")
    assert b"GPSsecret" in original
    stripped = strip(original, "image/jpeg", chunk)
    assert_clean(stripped)
    assert same_pixels(original, stripped)
    image = Image.open(io.BytesIO(stripped))
    assert dict(image.getexif()) == {0x0112: 6}  # orientation kept, alone
    assert image.info.get("icc_profile") == icc
    assert "comment" not in image.info and "xmp" not in image.info
    assert stripped.endswith(b"\xff\xd9") and stripped.count(b"\xff\xd8") == 1
    assert len(stripped) < len(original)


def test_jpeg_upright_loses_its_exif_and_jfif_its_thumbnail() -> None:
    original = jpeg(exif=exif(1))
    stripped = strip(original, "image/jpeg", 100)
    assert b"Exif" not in stripped
    assert_clean(stripped)
    assert same_pixels(original, stripped)
    # JFIF with a 2×1 thumbnail: the thumbnail goes, the JFIF header stays.
    thumb = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x02\x01" + b"\x11" * 6
    with_thumb = original[:2] + b"\xff\xe0" + struct.pack(">H", 2 + len(thumb)) + thumb
    with_thumb += original[2 + 18 :]  # Pillow's own JFIF segment is 18 bytes
    out = strip(with_thumb, "image/jpeg", 3)
    assert out[2:20] == b"\xff\xe0\x00\x10JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00"
    assert same_pixels(with_thumb, out)


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_png(chunk: int) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "comment-secret")
    info.add_text("Software", "Canon", zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    out = io.BytesIO()
    picture(mode="RGBA").save(out, "PNG", pnginfo=info, exif=exif(8))
    original = out.getvalue()
    # a tIME chunk, as editors write
    time_data = struct.pack(">HBBBBB", 2024, 1, 2, 3, 4, 5)
    time_chunk = struct.pack(">I", 7) + b"tIME" + time_data
    time_chunk += struct.pack(">I", __import__("zlib").crc32(b"tIME" + time_data))
    original = original[:33] + time_chunk + original[33:] + b"trailing-comment-secret"
    stripped = strip(original, "image/png", chunk)
    assert_clean(stripped)
    assert b"tIME" not in stripped and b"tEXt" not in stripped and b"iTXt" not in stripped
    assert same_pixels(original, stripped)
    image = Image.open(io.BytesIO(stripped))
    image.load()
    assert dict(image.getexif()) == {0x0112: 8}
    assert stripped.endswith(b"IEND\xaeB`\x82")


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_gif(chunk: int) -> None:
    frames = [picture(mode="RGB").convert("P"), picture((120, 80)).rotate(90).convert("P")]
    out = io.BytesIO()
    frames[0].save(
        out, "GIF", save_all=True, append_images=frames[1:], loop=0, comment=b"comment-secret"
    )
    original = out.getvalue()
    # An XMP application extension (as Photoshop writes), right after the global colour table.
    packed = original[10]
    header = 13 + (3 * (1 << ((packed & 7) + 1)) if packed & 0x80 else 0)
    xmp_ext = b"\x21\xff\x0bXMP DataXMP" + bytes([len(XMP)]) + XMP + b"\x00"
    original = original[:header] + xmp_ext + original[header:] + b"after-comment-secret"
    assert Image.open(io.BytesIO(original)).n_frames == 2  # type: ignore[attr-defined]
    stripped = strip(original, "image/gif", chunk)
    assert_clean(stripped)
    assert b"NETSCAPE2.0" in stripped  # looping stays
    assert same_pixels(original, stripped)
    assert stripped.endswith(b"\x3b")


@pytest.mark.parametrize("chunk", CHUNKINGS)
@pytest.mark.parametrize("animated", [False, True])
def test_webp_keeps_its_size(chunk: int, animated: bool) -> None:
    out = io.BytesIO()
    frames = [picture(mode="RGBA"), picture(mode="RGBA").rotate(180)]
    if animated:
        frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], exif=exif(3), xmp=XMP)
    else:
        frames[0].save(out, "WEBP", exif=exif(3), xmp=XMP, quality=90)
    original = out.getvalue()
    assert b"GPSsecret" in original and b"xmp-secret" in original
    stripped = strip(original + b"trailing-comment-secret", "image/webp", chunk)
    assert len(stripped) == len(original)
    assert_clean(stripped)
    assert same_pixels(original, stripped)
    image = Image.open(io.BytesIO(stripped))
    assert not image.info.get("xmp")
    assert dict(image.getexif()) == {0x0112: 3}
    assert stripped[20] & 0x04 == 0  # VP8X: no XMP announced


def test_orientation_block_round_trips() -> None:
    for orientation in range(1, 9):
        assert orientation_of(orientation_tiff(orientation)) == orientation
    assert orientation_of(b"garbage") == 1


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("image/jpeg", b"\xff\xd8\xff\xe1\x00\x40Exif\x00\x00"),  # cut inside a segment
        ("image/jpeg", b"GIF89a"),
        ("image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"),
        ("image/gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00\x21\xfe\x05abc"),
        ("image/webp", b"RIFF\x40\x00\x00\x00WEBPVP8 "),
    ],
)
def test_truncated_or_foreign_input_is_invalid(content_type: str, data: bytes) -> None:
    with pytest.raises(InvalidContent):
        strip(data, content_type, 3)


def test_other_types_are_not_stripped() -> None:
    assert MetadataStripper.for_type("application/pdf") is None
