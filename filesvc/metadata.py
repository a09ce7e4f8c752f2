"""Stripping metadata from images as they stream, without re-encoding a pixel.

``FILESVC_STRIP_METADATA=true`` runs every JPEG, PNG, GIF and WebP upload
through a :class:`MetadataStripper` before it is hashed and stored, so the
recorded ``sha256`` is that of the stored bytes. The stripper keeps a few
bytes of state and at most one metadata segment (64 KiB for JPEG, bounded for
PNG) in memory, whatever the file's size.

What goes, and what stays:

- **JPEG**: APP1 (EXIF, XMP), APP13 (IPTC, Photoshop), every other APPn and
  COM go, and so do bytes after the end marker (appended images and videos:
  MPF pictures, motion photos, which carry their own EXIF). Kept: JFIF (with
  its embedded thumbnail dropped), Adobe APP14 (it says how to decode CMYK) and
  the ICC profile (APP2 ``ICC_PROFILE``: dropping it would change colours).
- **PNG**: text chunks (tEXt, zTXt, iTXt: XMP lives there), tIME, eXIf and
  every ancillary chunk not known to affect rendering go, as do bytes after
  IEND. Kept: critical chunks and tRNS, gAMA, cHRM, sRGB, iCCP, cICP, mDCv,
  cLLi, sBIT, bKGD, hIST, pHYs, sPLT and APNG's acTL, fcTL and fdAT.
- **GIF**: comment extensions and application extensions other than the
  looping (NETSCAPE2.0, ANIMEXTS1.0) and ICC ones (XMP lives there) go, and
  bytes after the trailer. Graphic control and plain text extensions stay.
- **WebP**: the RIFF size comes first, so chunks keep their sizes: XMP and
  unknown chunks become ``JUNK`` chunks of zeros of the same length (readers
  skip unknown chunks), the XMP flag of VP8X is cleared, and bytes after the
  RIFF size go.

EXIF's orientation is no metadata about the photographer but about the
pixels: without it a phone photo shows sideways. Where it is not 1 it is
kept, alone, in a new minimal EXIF block (JPEG, PNG) or in the EXIF chunk's
place (WebP); everything else of the EXIF block (GPS, camera, dates) goes.
"""

from __future__ import annotations

import re
import struct
import zlib

from filesvc.errors import InvalidContent

#: Types the stripper understands; others are stored as they come.
STRIPPABLE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
#: Largest PNG eXIf chunk read for its orientation; bigger ones go unread.
MAX_PNG_EXIF_BYTES = 256 * 1024
_ORIENTATION = 0x0112


def orientation_of(tiff: bytes) -> int:
    """The orientation in a TIFF-structured EXIF block; 1 when absent or unreadable."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for index in range(count):
        entry = ifd + 2 + index * 12
        if entry + 12 > len(tiff):
            return 1
        tag, kind, _, value = struct.unpack_from(order + "HHI2s", tiff, entry)
        if tag == _ORIENTATION and kind == 3:
            (orientation,) = struct.unpack(order + "H", value)
            return orientation if 1 <= orientation <= 8 else 1
    return 1


def orientation_tiff(orientation: int) -> bytes:
    """A 26-byte EXIF block (TIFF structure) holding the orientation and nothing else."""
    return b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, _ORIENTATION, 3, 1, orientation, 0, 0)


class MetadataStripper:
    """Feed the bytes in order; get the stripped bytes back as they are known."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._copy = 0  # bytes to pass through
        self._skip = 0  # bytes to drop
        self._zero = 0  # bytes to replace by zeros
        self._done = False  # past the end of the image: drop the rest

    @staticmethod
    def for_type(content_type: str) -> MetadataStripper | None:
        kind = _STRIPPERS.get(content_type)
        return kind() if kind is not None else None

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        self._run()
        return self._take()

    def finish(self) -> bytes:
        """The last bytes; 422 when the file ended inside a structure."""
        self._run()
        if not self._complete():
            raise InvalidContent("The image ends in the middle of its structure.")
        return self._take()

    def _take(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def _run(self) -> None:
        while True:
            if self._done:
                self._buf.clear()
                return
            if self._copy or self._skip or self._zero:
                if not self._buf:
                    return
                n = len(self._buf)
                if self._copy:
                    take = min(self._copy, n)
                    self._out.append(bytes(self._buf[:take]))
                    self._copy -= take
                elif self._skip:
                    take = min(self._skip, n)
                    self._skip -= take
                else:
                    take = min(self._zero, n)
                    self._out.append(bytes(take))
                    self._zero -= take
                del self._buf[:take]
                continue
            if not self._step():
                return

    def _emit(self, data: bytes) -> None:
        self._out.append(data)

    def _step(self) -> bool:
        """Consume one structure from the buffer; False when more bytes are needed."""
        raise NotImplementedError

    def _complete(self) -> bool:
        return self._done


_ENTROPY_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_KEEP_APP = {
    0xE2: b"ICC_PROFILE\x00",
    0xEE: b"Adobe",
}


class JpegStripper(MetadataStripper):
    def __init__(self) -> None:
        super().__init__()
        self._state = "soi"

    def _complete(self) -> bool:
        # A JPEG cut off after its pixels (no EOI) still decodes; inside a header it does not.
        return self._done or (self._state == "entropy" and not self._copy and not self._skip)

    def _step(self) -> bool:
        buf = self._buf
        if self._state == "soi":
            if len(buf) < 2:
                return False
            if buf[:2] != b"\xff\xd8":
                raise InvalidContent("The JPEG does not start with its start marker.")
            self._emit(b"\xff\xd8")
            del buf[:2]
            self._state = "marker"
            return True
        if self._state == "entropy":
            match = _ENTROPY_MARKER.search(buf)
            if match is None:
                keep = 1 if buf.endswith(b"\xff") else 0
                self._emit(bytes(buf[: len(buf) - keep]))
                del buf[: len(buf) - keep]
                return False
            self._emit(bytes(buf[: match.start()]))
            del buf[: match.start()]
            self._state = "marker"
            return True
        # A marker.
        if len(buf) < 2:
            return False
        if buf[0] != 0xFF:
            raise InvalidContent("The JPEG has bytes where a marker should be.")
        marker = buf[1]
        if marker == 0xFF:  # fill byte
            del buf[:1]
            return True
        if marker == 0xD9:  # EOI: anything after it is another file's
            self._emit(b"\xff\xd9")
            self._done = True
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            self._emit(bytes(buf[:2]))
            del buf[:2]
            self._state = "entropy"
            return True
        if len(buf) < 4:
            return False
        (length,) = struct.unpack_from(">H", buf, 2)
        if length < 2:
            raise InvalidContent("The JPEG has a segment of impossible length.")
        total = 2 + length
        if marker == 0xDA:  # SOS: its header, then the entropy-coded data
            self._copy = total
            self._state = "entropy"
            return True
        if marker == 0xE1 and length >= 8:
            if len(buf) < min(total, 10):
                return False
            if bytes(buf[4:10]) == b"Exif\x00\x00":
                if len(buf) < total:
                    return False
                orientation = orientation_of(bytes(buf[10:total]))
                del buf[:total]
                if orientation != 1:
                    body = b"Exif\x00\x00" + orientation_tiff(orientation)
                    self._emit(b"\xff\xe1" + struct.pack(">H", 2 + len(body)) + body)
                return True
            self._skip = total
            return True
        if marker == 0xE0:  # JFIF stays (without its thumbnail); JFXX thumbnails go
            if len(buf) < min(total, 16):
                return False
            if length >= 16 and bytes(buf[4:9]) == b"JFIF\x00":
                self._emit(b"\xff\xe0\x00\x10" + bytes(buf[4:16]) + b"\x00\x00")
            self._skip = total
            return True
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            identifier = _KEEP_APP.get(marker)
            if identifier is None:
                self._skip = total
                return True
            if len(buf) < min(total, 4 + len(identifier)):
                return False
            if bytes(buf[4 : 4 + len(identifier)]) == identifier:
                self._copy = total
            else:
                self._skip = total
            return True
        self._copy = total  # tables, frame headers and the like
        return True


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = frozenset(
    b"tRNS gAMA cHRM sRGB iCCP cICP mDCv cLLi sBIT bKGD hIST pHYs sPLT acTL fcTL fdAT".split()
)


class PngStripper(MetadataStripper):
    def __init__(self) -> None:
        super().__init__()
        self._started = False

    def _complete(self) -> bool:
        return self._done

    def _step(self) -> bool:
        buf = self._buf
        if not self._started:
            if len(buf) < 8:
                return False
            if bytes(buf[:8]) != _PNG_SIGNATURE:
                raise InvalidContent("The PNG does not start with its signature.")
            self._emit(_PNG_SIGNATURE)
            del buf[:8]
            self._started = True
            return True
        if len(buf) < 8:
            return False
        length, kind = struct.unpack_from(">I4s", buf, 0)
        total = 12 + length
        if kind == b"IEND":
            if len(buf) < 12:
                return False
            self._emit(bytes(buf[:12]))
            self._done = True
            return True
        if kind[0] & 0x20 == 0 or kind in _PNG_KEEP:  # critical, or known to affect rendering
            self._copy = total
            return True
        if kind == b"eXIf" and length <= MAX_PNG_EXIF_BYTES:
            if len(buf) < total:
                return False
            orientation = orientation_of(bytes(buf[8 : 8 + length]))
            del buf[:total]
            if orientation != 1:
                data = orientation_tiff(orientation)
                crc = zlib.crc32(b"eXIf" + data)
                self._emit(struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", crc))
            return True
        self._skip = total
        return True


_GIF_KEEP_APPS = (b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012")


class GifStripper(MetadataStripper):
    def __init__(self) -> None:
        super().__init__()
        self._state = "header"
        self._keep_blocks = True

    def _step(self) -> bool:
        buf = self._buf
        if self._state == "header":
            if len(buf) < 13:
                return False
            if bytes(buf[:3]) != b"GIF":
                raise InvalidContent("The GIF does not start with its signature.")
            packed = buf[10]
            table = 3 * (1 << ((packed & 7) + 1)) if packed & 0x80 else 0
            self._copy = 13 + table
            self._state = "block"
            return True
        if self._state == "subblocks":
            if not buf:
                return False
            size = buf[0]
            if size == 0:
                if self._keep_blocks:
                    self._emit(b"\x00")
                del buf[:1]
                self._state = "block"
                return True
            if self._keep_blocks:
                self._copy = 1 + size
            else:
                self._skip = 1 + size
            return True
        if not buf:
            return False
        introducer = buf[0]
        if introducer == 0x3B:  # trailer: anything after it is not the image's
            self._emit(b"\x3b")
            self._done = True
            return True
        if introducer == 0x2C:  # image descriptor, local colour table, LZW code size
            if len(buf) < 10:
                return False
            packed = buf[9]
            table = 3 * (1 << ((packed & 7) + 1)) if packed & 0x80 else 0
            self._copy = 10 + table + 1
            self._keep_blocks = True
            self._state = "subblocks"
            return True
        if introducer != 0x21:
            raise InvalidContent("The GIF has bytes where a block should be.")
        if len(buf) < 2:
            return False
        label = buf[1]
        if label == 0xFF:
            if len(buf) < 3 or len(buf) < 3 + min(buf[2], 11):
                return False
            keep = buf[2] == 11 and bytes(buf[3:14]) in _GIF_KEEP_APPS
        else:
            keep = label in (0xF9, 0x01)  # graphic control, plain text
        if keep:
            self._emit(bytes(buf[:2]))
        del buf[:2]
        self._keep_blocks = keep
        self._state = "subblocks"
        return True


_WEBP_KEEP = frozenset({b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP"})
_VP8X_XMP = 0x04
_VP8X_EXIF = 0x08


class WebpStripper(MetadataStripper):
    def __init__(self) -> None:
        super().__init__()
        self._remaining: int | None = None  # chunk bytes left inside the RIFF size

    def _complete(self) -> bool:
        return self._done or self._remaining == 0

    def _step(self) -> bool:
        buf = self._buf
        if self._remaining is None:
            if len(buf) < 12:
                return False
            if bytes(buf[:4]) != b"RIFF" or bytes(buf[8:12]) != b"WEBP":
                raise InvalidContent("The WebP does not start with its RIFF header.")
            (size,) = struct.unpack_from("<I", buf, 4)
            self._remaining = size - 4
            self._copy = 12
            return True
        if self._remaining <= 0:
            self._done = True  # bytes after the RIFF size belong to no chunk
            return True
        if len(buf) < 8:
            return False
        kind, size = struct.unpack_from("<4sI", buf, 0)
        padded = size + (size & 1)
        total = 8 + padded
        if total > self._remaining:
            raise InvalidContent("A WebP chunk runs past the RIFF size.")
        self._remaining -= total
        if kind == b"VP8X":
            if len(buf) < 9:
                self._remaining += total
                return False
            self._emit(bytes(buf[:8]) + bytes([buf[8] & ~_VP8X_XMP]))
            del buf[:9]
            self._copy = total - 9
            return True
        if kind in _WEBP_KEEP:
            self._copy = total
            return True
        if kind == b"EXIF" and padded >= 8 + 26 + 8:
            if len(buf) < total:
                self._remaining += total
                return False
            payload = bytes(buf[8 : 8 + size])
            if payload.startswith(b"Exif\x00\x00"):
                payload = payload[6:]
            tiff = orientation_tiff(orientation_of(payload))
            rest = padded - len(tiff) - 8
            self._emit(b"EXIF" + struct.pack("<I", len(tiff)) + tiff)
            self._emit(b"JUNK" + struct.pack("<I", rest) + bytes(rest))
            del buf[:total]
            return True
        # XMP, a small EXIF and unknown chunks: the same length of nothing.
        self._emit(b"JUNK" + struct.pack("<I", padded))
        del buf[:8]
        self._zero = padded
        return True


_STRIPPERS: dict[str, type[MetadataStripper]] = {
    "image/jpeg": JpegStripper,
    "image/png": PngStripper,
    "image/gif": GifStripper,
    "image/webp": WebpStripper,
}
