"""Image validation while the bytes arrive.

Pillow decodes the image in a thread of its own from a forward-only stream
that the upload pipeline feeds chunk by chunk, so a 20 MB photo is decoded
without ever being held whole in memory (Pillow's own ``ImageFile.Parser``
buffers JPEG and PNG whole). A per-format screen (:mod:`filesvc.screening`)
stands between the bytes and Pillow: it skips metadata, so that decoders
only seek back into the first :data:`~filesvc.screening.HEAD_BYTES` of what
they see, and refuses data that cannot fill the size its header declares.
Exception: Pillow's WebP plugin reads the whole file before decoding.

Before Pillow allocates the bitmap, the decode reserves its bytes from the
process's :class:`~filesvc.decoding.DecodeBudget`. A JPEG is checked at 1/8
scale (libjpeg's DCT scaling still reads every coefficient), so its bitmap is
1/64 of the full size.

Pillow's own decompression-bomb check is not used: it only warns between
``MAX_IMAGE_PIXELS`` and twice that, and turning that warning into an error
would change the process-wide warnings filter. The pixel limit is checked here,
from the header, before anything is allocated.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator
from typing import IO

from PIL import Image, ImageFile

from filesvc.decoding import MMAP_THRESHOLD_BYTES, DecodeBudget, bitmap_bytes
from filesvc.errors import FilesvcError, InvalidContent
from filesvc.forwardstream import ForwardStream
from filesvc.screening import (
    HEAD_BYTES,
    JpegScreen,
    PngScreen,
    Screen,
    WebpScreen,
    screen_for,
)
from filesvc.sniffing import PILLOW_FORMATS


class _QueueSource:
    """The chunks handed to the probe, until the end marker."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self._chunks = chunks
        self._ended = False

    def __iter__(self) -> Iterator[bytes]:
        while not self._ended:
            chunk = self._chunks.get()
            if chunk is None:
                self._ended = True
                return
            yield chunk

    def drain(self) -> None:
        """Take (and drop) what is still coming, so that the feeder never blocks."""
        while not self._ended:
            if self._chunks.get() is None:
                self._ended = True


def _open(fp: IO[bytes], pillow_format: str) -> ImageFile.ImageFile:
    """Pillow's plugin for ``pillow_format`` on ``fp``, without ``Image.open``'s bomb warning."""
    Image.init()
    factory, accept = Image.OPEN[pillow_format]
    prefix = fp.read(16)
    fp.seek(0)
    if accept is not None and not accept(prefix):
        raise InvalidContent(f"The file is not a valid {pillow_format} image.")
    image = factory(fp, "")
    assert isinstance(image, ImageFile.ImageFile)
    return image


class ImageProbe:
    """Decodes one image in a background thread from chunks handed to :meth:`feed`.

    ``feed`` and ``finish`` block; call them from a worker thread, never the
    event loop.
    """

    #: Chunks queued ahead of the decoder: bounds memory per upload.
    queue_depth = 4

    def __init__(self, content_type: str, max_pixels: int, budget: DecodeBudget) -> None:
        self._format = PILLOW_FORMATS[content_type]
        self._max_pixels = max_pixels
        self._budget = budget
        # None ends the stream.
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=self.queue_depth)
        self.error: FilesvcError | None = None
        self.size: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="image-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        source = _QueueSource(self._chunks)
        screen = screen_for(self._format)
        stream = ForwardStream(screen.run(iter(source)), head_size=HEAD_BYTES, keep_behind=0)
        try:
            reader = io.BufferedReader(stream, buffer_size=64 * 1024)
            if isinstance(screen, WebpScreen):
                self.size = self._decode_webp(screen, reader)
            else:
                self.size = self._decode(screen, reader)
        except FilesvcError as exc:
            self.error = exc
        except Exception as exc:  # Pillow raises many kinds for corrupt data
            cause = exc.__context__
            if isinstance(cause, FilesvcError):  # a screen's refusal, re-raised by Pillow
                self.error = cause
            else:
                self.error = InvalidContent(f"The file is not a valid {self._format} image: {exc}.")
        finally:
            source.drain()

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self._max_pixels:
            raise InvalidContent(
                f"The image is {width}×{height} pixels, more than the limit of {self._max_pixels}."
            )

    def _decode(self, screen: Screen, reader: IO[bytes]) -> tuple[int, int]:
        with _open(reader, self._format) as image:
            width, height = image.size
            self._check_pixels(width, height)
            if isinstance(screen, JpegScreen):
                # 1/8 scale: libjpeg still decodes every block's coefficients.
                image.draft(image.mode, (1, 1))
            bitmap = screen.bitmap_copies * bitmap_bytes(image.mode, image.size)
            full = bitmap + screen.extra_bytes(width)
            if isinstance(screen, PngScreen) and not screen.interlaced:
                # Rows are written (and their pages made resident) as the data fills
                # them: start with what is touched at once and grow with the rows.
                # An interlaced image's first pass touches every page.
                row = bitmap_bytes(image.mode, (image.size[0], 1))
                start = full - bitmap + min(bitmap, MMAP_THRESHOLD_BYTES + height * 8)
                with self._budget.reserve(start, up_to=full) as reservation:
                    screen.on_rows = lambda rows: reservation.grow_to(start + rows * row)
                    self._load(image)
            else:
                with self._budget.reserve(full):
                    self._load(image)
        return width, height

    @staticmethod
    def _load(image: ImageFile.ImageFile) -> None:
        try:
            image.load()
        finally:
            image.close()  # frees the bitmap inside the reservation

    def _decode_webp(self, screen: WebpScreen, reader: IO[bytes]) -> tuple[int, int]:
        # libwebp allocates its canvases as the file is opened: reserve first.
        reader.read(screen.header_bytes)
        reader.seek(0)
        self._check_pixels(screen.width, screen.height)
        with self._budget.reserve(screen.extra_bytes(screen.width)):
            with _open(reader, self._format) as image:
                try:
                    image.load()
                    size = image.size
                finally:
                    image.close()
        return size

    def feed(self, data: bytes) -> None:
        if self.error is None:
            self._chunks.put(data)

    def finish(self) -> tuple[int, int]:
        """Wait for the decoder; the image's (width, height), or the refusal."""
        self._chunks.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.size is not None
        return self.size

    def abandon(self) -> None:
        """Let the decoder thread end without a verdict."""
        self._chunks.put(None)
