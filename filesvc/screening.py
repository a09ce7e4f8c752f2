"""Per-format screens between an upload's bytes and Pillow's decoder.

A screen passes an image's bytes on to the decoder as they arrive, with two
jobs Pillow does not do:

- **Hold nothing big.** Metadata the decoder does not need (JPEG APPn and COM
  segments, PNG text/ICC/EXIF chunks, GIF comment and application blocks) is
  skipped unread: Pillow would keep every byte of it in ``Image.info``, and a
  JPEG's decoder seeks back to the start of the file, past them.
- **Refuse data that cannot fill the declared size, before the decoder sees
  its end.** A screen checks, at the end of the image data, that it could fill
  what the header promises (JPEG: the fewest bits a Huffman-coded scan spends
  per 8×8 block; PNG: the inflated rows), and raises before passing on the
  marker or chunk that ends it. The decoder writes only rows it had data for,
  and a bitmap's untouched pages are never resident (see
  :func:`filesvc.decoding.tune_allocator`), so a lying header costs what its
  data can fill, not what it promises.

Each screen also knows what its decoder allocates on top of the bitmap, for
the decode budget.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from filesvc.errors import InvalidContent

#: Bytes of header a decoder may seek back into (the stream keeps them).
HEAD_BYTES = 64 * 1024
#: Allowance for a decoder's own tables and row buffers.
DECODER_WORKING_BYTES = 1024 * 1024


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _Reader:
    """Structured reads over a stream of chunks, holding only what is asked for."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0
        self.eof = False

    def _pull(self) -> bool:
        if self.eof:
            return False
        for chunk in self._chunks:
            if chunk:
                if self._pos:
                    del self._buf[: self._pos]
                    self._pos = 0
                self._buf += chunk
                return True
        self.eof = True
        return False

    def available(self) -> int:
        return len(self._buf) - self._pos

    def fill(self, n: int) -> bool:
        while self.available() < n:
            if not self._pull():
                return False
        return True

    def read(self, n: int, what: str) -> bytes:
        if not self.fill(n):
            raise InvalidContent(f"The file ends inside its {what}.")
        data = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return data

    def peek_byte(self, offset: int = 0) -> int | None:
        if not self.fill(offset + 1):
            return None
        return self._buf[self._pos + offset]

    def skip(self, n: int, what: str) -> None:
        while n:
            if not self.available() and not self._pull():
                raise InvalidContent(f"The file ends inside its {what}.")
            step = min(n, self.available())
            self._pos += step
            n -= step

    def pieces(self, n: int, what: str) -> Iterator[bytes]:
        """The next ``n`` bytes, as they arrive."""
        while n:
            if not self.available() and not self._pull():
                raise InvalidContent(f"The file ends inside its {what}.")
            step = min(n, self.available())
            yield bytes(self._buf[self._pos : self._pos + step])
            self._pos += step
            n -= step

    def rest(self) -> Iterator[bytes]:
        """Everything left, as it arrives."""
        while self.available() or self._pull():
            yield bytes(self._buf[self._pos :])
            self._pos = len(self._buf)

    def find_marker(self) -> Generator[bytes, None, int]:
        """Entropy-coded data up to the next JPEG marker other than RSTn (left unread).

        Returns (via StopIteration) the number of data bytes passed.
        """
        count = 0
        while True:
            buf = self._buf
            at = buf.find(b"\xff", self._pos)
            while at != -1 and at + 1 < len(buf):
                following = buf[at + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    # A stuffed 0xFF or a restart marker: still scan data.
                    at = buf.find(b"\xff", at + 2)
                elif following == 0xFF:  # a fill byte
                    at = buf.find(b"\xff", at + 1)
                else:
                    count += at - self._pos
                    yield bytes(buf[self._pos : at])
                    self._pos = at
                    return count
            # No marker in what arrived; a last 0xFF waits for the byte after it.
            end = len(buf) if at == -1 else at
            if end > self._pos:
                count += end - self._pos
                yield bytes(buf[self._pos : end])
                self._pos = end
            if not self._pull():
                count += self.available()
                if self.available():
                    yield bytes(buf[self._pos :])
                    self._pos = len(buf)
                return count


class Screen:
    """Passes the bytes through; the decoder's own checks are the only ones."""

    #: Bitmap copies the decoder may hold at once (BMP and TIFF decoders keep a raw copy).
    bitmap_copies = 2

    def run(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield from chunks

    def extra_bytes(self, width: int) -> int:
        """Bytes the decoder allocates beside the bitmap (once ``run`` has read the header)."""
        return DECODER_WORKING_BYTES


# JPEG ---------------------------------------------------------------------

_SOF_ACCEPTED = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}
_SOF_ANY = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}
#: Segments kept although APPn: JFIF (0) and Adobe (14) tell the decoder the colour space.
_APP_KEPT = {0xE0, 0xEE}
_APP_KEPT_MAX_BYTES = 64
#: Longest run of blocks one end-of-band code may cover in a progressive AC scan.
_MAX_EOBRUN = 32767


@dataclass(frozen=True, slots=True)
class _Component:
    ident: int
    h: int
    v: int
    width_blocks: int
    height_blocks: int


class JpegScreen(Screen):
    """Keeps the tables and scan headers, skips APPn/COM, checks each scan's length.

    Huffman coding spends at least one bit per 8×8 block on its DC difference
    and, in a sequential scan, one more on the block's AC codes (an end of
    block at least): a scan with fewer bytes than that cannot cover the frame
    it claims, however the image looks. Progressive AC scans may cover 32767
    blocks with one end-of-band run, so they are held only to that. Arithmetic
    coding has no such floor (a flat image costs almost nothing), and neither
    lossless nor hierarchical JPEG is displayed by browsers: those are refused.
    """

    bitmap_copies = 1

    def __init__(self) -> None:
        self.progressive = False
        self.components: list[_Component] = []
        self.width = self.height = 0
        self.multi_scan = False
        self._mcus = 0
        self._scans_seen = 0
        self._covered: set[int] = set()

    def extra_bytes(self, width: int) -> int:
        extra = DECODER_WORKING_BYTES + self.width * 16 * max(1, len(self.components)) * 4
        if self.multi_scan:
            # libjpeg keeps every coefficient (64 × 2 bytes a block) for a multi-scan file.
            for c in self.components:
                rows = _ceil_div(c.height_blocks, c.v) * c.v
                cols = _ceil_div(c.width_blocks, c.h) * c.h
                extra += rows * cols * 128
        return extra

    def run(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        reader = _Reader(chunks)
        if reader.read(2, "JPEG header") != b"\xff\xd8":
            raise InvalidContent("The file does not start like a JPEG.")
        yield b"\xff\xd8"
        kept = 2
        while True:
            if reader.peek_byte() is None:
                self._check_complete()
                return
            while reader.read(1, "JPEG header") != b"\xff":
                pass  # stray bytes before a marker: libjpeg skips them too
            marker = reader.peek_byte()
            while marker == 0xFF:  # fill bytes
                reader.skip(1, "JPEG header")
                marker = reader.peek_byte()
            if marker is None:
                raise InvalidContent("The file ends inside its JPEG header.")
            reader.skip(1, "JPEG header")
            if marker == 0xD9:
                self._check_complete()
                yield b"\xff\xd9"
                yield from reader.rest()
                return
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                yield bytes((0xFF, marker))
                continue
            if marker == 0xD8:
                raise InvalidContent("The JPEG starts a second image inside the first.")
            length_bytes = reader.read(2, "JPEG header")
            (length,) = struct.unpack(">H", length_bytes)
            if length < 2:
                raise InvalidContent("The JPEG has a segment of impossible length.")
            if 0xE0 <= marker <= 0xEF or marker == 0xFE:
                if (
                    marker in _APP_KEPT
                    and length - 2 <= _APP_KEPT_MAX_BYTES
                    and not self._scans_seen
                ):
                    body = reader.read(length - 2, "JPEG header")
                    kept += 4 + len(body)
                    yield bytes((0xFF, marker)) + length_bytes + body
                else:
                    reader.skip(length - 2, "JPEG metadata")
                continue
            body = reader.read(length - 2, "JPEG header")
            if marker in _SOF_ANY:
                self._frame(marker, body)
            if not self._scans_seen:
                kept += 4 + len(body)
                if kept > HEAD_BYTES:
                    raise InvalidContent(
                        f"The JPEG's tables take more than {HEAD_BYTES} bytes before its "
                        "image data."
                    )
            yield bytes((0xFF, marker)) + length_bytes + body
            if marker == 0xDA:
                need = self._scan(body)
                count = yield from reader.find_marker()
                if count * 8 < need:
                    raise InvalidContent(
                        f"The JPEG's image data cannot fill its {self.width}×{self.height} "
                        f"pixels: a scan has {count} bytes where it needs at least "
                        f"{math.ceil(need / 8)}."
                    )

    def _frame(self, marker: int, body: bytes) -> None:
        if marker not in _SOF_ACCEPTED:
            raise InvalidContent(
                "Arithmetic-coded, lossless and hierarchical JPEGs are not accepted."
            )
        if self.components:
            raise InvalidContent("The JPEG declares two frames.")
        if len(body) < 6:
            raise InvalidContent("The JPEG's frame header is too short.")
        _, height, width, count = struct.unpack(">BHHB", body[:6])
        if not width or not height or not count or len(body) < 6 + 3 * count:
            raise InvalidContent("The JPEG's frame header is invalid.")
        factors = [(body[6 + 3 * i], body[7 + 3 * i]) for i in range(count)]
        hmax = max(f >> 4 for _, f in factors)
        vmax = max(f & 15 for _, f in factors)
        if not hmax or not vmax or any(not (f >> 4) or not (f & 15) for _, f in factors):
            raise InvalidContent("The JPEG's frame header has a zero sampling factor.")
        self.progressive = marker == 0xC2
        self.width, self.height = width, height
        self._mcus = _ceil_div(width, 8 * hmax) * _ceil_div(height, 8 * vmax)
        self.components = [
            _Component(
                ident,
                f >> 4,
                f & 15,
                _ceil_div(_ceil_div(width * (f >> 4), hmax), 8),
                _ceil_div(_ceil_div(height * (f & 15), vmax), 8),
            )
            for ident, f in factors
        ]

    def _scan(self, body: bytes) -> int:
        """Record a scan header; the fewest bits its data can take."""
        if not self.components or not body:
            raise InvalidContent("The JPEG's scan header comes before its frame header.")
        count = body[0]
        if not count or len(body) < 1 + 2 * count + 3:
            raise InvalidContent("The JPEG's scan header is invalid.")
        by_id = {c.ident: c for c in self.components}
        try:
            members = [by_id[body[1 + 2 * i]] for i in range(count)]
        except KeyError:
            raise InvalidContent("The JPEG's scan names a component it does not have.") from None
        start, _end, approx = body[1 + 2 * count], body[2 + 2 * count], body[3 + 2 * count]
        if not self._scans_seen:
            self.multi_scan = self.progressive or count < len(self.components)
        self._scans_seen += 1
        if count == 1:
            blocks = members[0].width_blocks * members[0].height_blocks
        else:
            blocks = self._mcus * sum(c.h * c.v for c in members)
        if not self.progressive:
            self._covered.update(c.ident for c in members)
            return 2 * blocks
        if start == 0:
            if approx >> 4 == 0:
                self._covered.update(c.ident for c in members)
            return blocks
        return _ceil_div(blocks, _MAX_EOBRUN)

    def _check_complete(self) -> None:
        missing = [c for c in self.components if c.ident not in self._covered]
        if not self._scans_seen or missing:
            raise InvalidContent(
                f"The JPEG's image data cannot fill its {self.width}×{self.height} pixels: "
                "a colour component has no scan."
            )


# PNG ----------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Chunks the decoder needs; every other (text, ICC, EXIF, APNG frames...) is skipped.
_PNG_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
_PNG_KEPT_MAX_BYTES = 4096
_ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)
_INFLATE_STEP = 64 * 1024


class PngScreen(Screen):
    """Keeps the chunks decoding needs; inflates the image data to count its rows.

    Pillow accepts a PNG whose compressed data ends cleanly after a few rows
    (the rest of the bitmap stays blank): the screen inflates the data as it
    passes (counting bytes, keeping none) and refuses it unless it holds every
    row the header declares. As it counts, it tells :attr:`on_rows` how many
    rows the data passed on so far can fill, so that a decode's reservation
    grows with its data rather than with its header's promise.
    """

    bitmap_copies = 1

    def __init__(self) -> None:
        self.on_rows: Callable[[int], None] | None = None
        self.interlaced = False
        self.width = self.height = 0
        self._row_bytes = 0
        self._expected = 0
        self._inflated = 0
        self._inflater = zlib.decompressobj()

    def extra_bytes(self, width: int) -> int:
        # The decoder keeps the previous and the current row; zlib its window.
        return DECODER_WORKING_BYTES + 2 * (self._row_bytes + 1)

    def run(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        reader = _Reader(chunks)
        if reader.read(8, "PNG header") != _PNG_SIGNATURE:
            raise InvalidContent("The file does not start like a PNG.")
        yield _PNG_SIGNATURE
        state = "header"  # then "data" (IDAT chunks) and "after"
        while True:
            if reader.peek_byte() is None:
                self._check_filled(state)
                return
            head = reader.read(8, "PNG chunk header")
            length, kind = struct.unpack(">I4s", head)
            if length > 0x7FFFFFFF:
                raise InvalidContent("The PNG has a chunk of impossible length.")
            if kind == b"IDAT":
                if state == "after":
                    raise InvalidContent("The PNG's image data is split by other chunks.")
                if not self._expected:
                    raise InvalidContent("The PNG's image data comes before its header.")
                state = "data"
                yield head
                for piece in reader.pieces(length, "PNG image data"):
                    self._inflate(piece)
                    if self.on_rows is not None and not self.interlaced:
                        # The row being filled counts too.
                        self.on_rows(min(self.height, self._inflated // (self._row_bytes + 1) + 1))
                    yield piece
                yield reader.read(4, "PNG image data")
                continue
            if state == "data":
                self._check_filled(state)
                state = "after"
            if kind in _PNG_KEPT and length <= _PNG_KEPT_MAX_BYTES:
                body = reader.read(length + 4, "PNG chunk")
                if kind == b"IHDR":
                    self._header(body[:-4])
                yield head + body
                if kind == b"IEND":
                    return
            elif kind[0] & 0x20 or kind in (b"fdAT", b"fcTL", b"acTL"):
                # Ancillary (lower-case first letter) or APNG frames: not needed to check the image.
                reader.skip(length + 4, "PNG chunk")
            else:
                raise InvalidContent(
                    f"The PNG has an unknown or oversized critical chunk {kind!r}."
                )

    def _header(self, body: bytes) -> None:
        if len(body) != 13 or self._expected:
            raise InvalidContent("The PNG's header chunk is invalid.")
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or not width or not height:
            raise InvalidContent("The PNG's header chunk is invalid.")
        bits = _PNG_CHANNELS[colour] * depth
        self.width, self.height = width, height
        self.interlaced = bool(interlace)
        self._row_bytes = _ceil_div(width * bits, 8)
        if interlace:
            passes = []
            for x0, y0, dx, dy in _ADAM7:
                w, h = _ceil_div(width - x0, dx), _ceil_div(height - y0, dy)
                if w > 0 and h > 0:
                    passes.append(h * (1 + _ceil_div(w * bits, 8)))
            self._expected = sum(passes)
        else:
            self._expected = height * (1 + self._row_bytes)

    def _inflate(self, data: bytes) -> None:
        inflater = self._inflater
        # Once every row is there, the rest need not be inflated (nor cost CPU).
        while self._inflated < self._expected and not inflater.eof:
            try:
                out = inflater.decompress(data, _INFLATE_STEP)
            except zlib.error as exc:
                raise InvalidContent(
                    f"The PNG's image data is not valid zlib data: {exc}."
                ) from None
            self._inflated += len(out)
            data = inflater.unconsumed_tail
            if not data and len(out) < _INFLATE_STEP:
                return

    def _check_filled(self, state: str) -> None:
        if state == "header":
            raise InvalidContent("The PNG has no image data.")
        if self._inflated < self._expected:
            raise InvalidContent(
                f"The PNG's image data cannot fill its {self.width}×{self.height} pixels: "
                f"it inflates to {self._inflated} of the {self._expected} bytes its rows need."
            )


# GIF ----------------------------------------------------------------------

_GIF_GRAPHIC_CONTROL = 0xF9


class GifScreen(Screen):
    """Skips comment, text and application blocks (Pillow keeps comments whole).

    The GIF decoder itself refuses a frame its data does not fill.
    """

    bitmap_copies = 1

    def run(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        reader = _Reader(chunks)
        header = reader.read(13, "GIF header")
        yield header
        if header[10] & 0x80:
            yield reader.read(3 << ((header[10] & 7) + 1), "GIF palette")
        while True:
            introducer = reader.peek_byte()
            if introducer != 0x21:
                # The first image (or the end, or garbage): the decoder takes it from here.
                yield from reader.rest()
                return
            label = reader.read(2, "GIF extension")[1]
            keep = label == _GIF_GRAPHIC_CONTROL
            if keep:
                yield bytes((0x21, label))
            while True:
                size = reader.read(1, "GIF extension")[0]
                if keep:
                    yield bytes((size,)) + reader.read(size, "GIF extension")
                else:
                    reader.skip(size, "GIF extension")
                if not size:
                    break
            if not keep:
                continue


# WebP ---------------------------------------------------------------------


class WebpScreen(Screen):
    """Reads the canvas size before Pillow does, and ends the stream at the RIFF's end.

    Pillow's WebP plugin reads the whole file and libwebp allocates its two
    canvases when the file is opened, so the budget is taken before opening:
    the file (held three times: read, joined, copied into libwebp) and four
    canvas-sized buffers (libwebp's current and previous canvases, the frame
    Pillow copies out, Pillow's bitmap). A file shorter than its RIFF size, or
    a lossy frame whose first partition is longer than its chunk, is refused
    before libwebp sees it.
    """

    bitmap_copies = 0
    header_bytes = 30

    def __init__(self) -> None:
        self.width = self.height = 0
        self.riff_bytes = 0

    def extra_bytes(self, width: int) -> int:
        return DECODER_WORKING_BYTES + 3 * self.riff_bytes + 4 * 4 * self.width * self.height

    def run(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        reader = _Reader(chunks)
        head = reader.read(self.header_bytes, "WebP header")
        riff, size, webp, kind, chunk_size = struct.unpack("<4sI4s4sI", head[:20])
        if riff != b"RIFF" or webp != b"WEBP":
            raise InvalidContent("The file does not start like a WebP.")
        self.riff_bytes = size + 8
        if self.riff_bytes < self.header_bytes:
            raise InvalidContent("The WebP's RIFF header declares an impossible size.")
        if kind == b"VP8 ":
            tag = int.from_bytes(head[20:23], "little")
            if head[23:26] != b"\x9d\x01\x2a" or (tag >> 5) & 0x7FFFF > chunk_size - 10:
                raise InvalidContent("The WebP's lossy frame header is invalid.")
            self.width = int.from_bytes(head[26:28], "little") & 0x3FFF
            self.height = int.from_bytes(head[28:30], "little") & 0x3FFF
        elif kind == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            self.width = (bits & 0x3FFF) + 1
            self.height = ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"VP8X":
            self.width = int.from_bytes(head[24:27], "little") + 1
            self.height = int.from_bytes(head[27:30], "little") + 1
        else:
            raise InvalidContent("The WebP has an unknown first chunk.")
        if not self.width or not self.height:
            raise InvalidContent("The WebP declares an empty image.")
        yield head
        left = self.riff_bytes - len(head)
        yield from reader.pieces(left, "WebP data (it is shorter than its RIFF header says)")
        # Bytes after the RIFF are not the image's: the decoder never sees them.


def screen_for(pillow_format: str) -> Screen:
    if pillow_format == "JPEG":
        return JpegScreen()
    if pillow_format == "PNG":
        return PngScreen()
    if pillow_format == "GIF":
        return GifScreen()
    if pillow_format == "WEBP":
        return WebpScreen()
    return Screen()
