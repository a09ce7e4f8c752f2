"""Image validation while the bytes arrive.

Pillow decodes the image in a thread of its own from a forward-only stream
that the upload pipeline feeds chunk by chunk, so a 20 MB photo is decoded
without ever being held whole in memory (Pillow's own ``ImageFile.Parser``
buffers JPEG and PNG whole). Decoders only seek back into the first bytes of
a file (to re-read the header), so the stream keeps just that head.
Exception: Pillow's WebP plugin reads the whole file before decoding.
"""

from __future__ import annotations

import io
import queue
import threading
import warnings

from PIL import Image

from filesvc.errors import InvalidContent
from filesvc.sniffing import PILLOW_FORMATS

# Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is an error here.
warnings.simplefilter("error", Image.DecompressionBombWarning)

_END = b""


class _ForwardStream(io.RawIOBase):
    """A readable stream over chunks from a queue; seeks back only into the head."""

    head_size = 64 * 1024
    #: Consumed bytes kept before they are trimmed from the window.
    trim_bytes = 1024 * 1024

    def __init__(self, chunks: queue.Queue[bytes]) -> None:
        self._chunks = chunks
        self._head = bytearray()
        self._window = bytearray()  # bytes [window_start, received)
        self._window_start = 0
        self._received = 0
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        else:
            while self._pull():
                pass
            target = self._received + offset
        if target < 0:
            raise OSError("negative seek")
        self._pos = target
        return target

    def _pull(self) -> bool:
        if self._eof:
            return False
        chunk = self._chunks.get()
        if chunk is _END:
            self._eof = True
            return False
        if self._received < self.head_size:
            self._head += chunk[: self.head_size - self._received]
        self._window += chunk
        self._received += len(chunk)
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._received <= self._pos and self._pull():
            pass
        want = len(buffer)
        if self._pos < len(self._head):
            data = self._head[self._pos : self._pos + want]
        else:
            start = self._pos - self._window_start
            if start < 0:
                raise OSError("the image decoder seeked back past the retained head")
            data = self._window[start : start + want]
        buffer[: len(data)] = data
        self._pos += len(data)
        consumed = self._pos - self._window_start
        if consumed > self.trim_bytes and self._pos >= self.head_size:
            del self._window[:consumed]
            self._window_start = self._pos
        return len(data)

    def drain(self) -> None:
        while self._pull():
            self._window.clear()
            self._window_start = self._received


class ImageProbe:
    """Decodes one image in a background thread from chunks handed to :meth:`feed`.

    ``feed`` and ``finish`` block; call them from a worker thread, never the
    event loop.
    """

    #: Chunks queued ahead of the decoder: bounds memory per upload.
    queue_depth = 4

    def __init__(self, content_type: str, max_pixels: int) -> None:
        self._format = PILLOW_FORMATS[content_type]
        self._max_pixels = max_pixels
        self._chunks: queue.Queue[bytes] = queue.Queue(maxsize=self.queue_depth)
        self.error: InvalidContent | None = None
        self.size: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="image-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stream = _ForwardStream(self._chunks)
        try:
            reader = io.BufferedReader(stream, buffer_size=64 * 1024)
            with Image.open(reader, formats=[self._format]) as image:
                width, height = image.size
                if width * height > self._max_pixels:
                    raise InvalidContent(
                        f"The image is {width}×{height} pixels, more than the limit of "
                        f"{self._max_pixels}."
                    )
                image.load()
                self.size = (width, height)
        except InvalidContent as exc:
            self.error = exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            self.error = InvalidContent("The image exceeds the pixel limit (decompression bomb).")
        except Exception as exc:  # Pillow raises many kinds for corrupt data
            self.error = InvalidContent(f"The file is not a valid {self._format} image: {exc}.")
        finally:
            stream.drain()

    def feed(self, data: bytes) -> None:
        if self.error is None:
            self._chunks.put(data)

    def finish(self) -> tuple[int, int]:
        """Wait for the decoder; the image's (width, height) or :class:`InvalidContent`."""
        self._chunks.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.size is not None
        return self.size

    def abandon(self) -> None:
        """Let the decoder thread end without a verdict."""
        self._chunks.put(_END)
