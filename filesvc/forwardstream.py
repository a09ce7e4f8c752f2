"""A forward-only stream of chunks that image decoders can read as a seekable file.

Decoders read headers twice and seek a little, but an upload or a stored
original arrives once, in order. :class:`ForwardStream` keeps only what a
decoder may seek back into: the first ``head_size`` bytes and ``keep_behind``
bytes behind the read position (or everything), so memory stays bounded
whatever the file's size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator


class ForwardStream(io.RawIOBase):
    """A readable, seekable view of ``chunks``; seeks back only into what is kept.

    ``keep_behind=None`` keeps every byte (for formats whose directory may sit
    at the end). Seeking forward, or from the end, reads ahead.
    """

    #: Bytes past the kept ones before they are trimmed: in large steps, not per read.
    trim_step = 1024 * 1024

    def __init__(self, chunks: Iterator[bytes], *, head_size: int, keep_behind: int | None) -> None:
        self._chunks = chunks
        self.head_size = head_size
        self._keep_behind = keep_behind
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
        chunk = b""
        while not chunk:  # screens may pass on empty pieces
            if self._eof:
                return False
            next_chunk = next(self._chunks, None)
            if next_chunk is None:
                self._eof = True
                return False
            chunk = next_chunk
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
            # A short read at the head's end is fine: the reader asks again.
            data = self._head[self._pos : self._pos + want]
        else:
            start = self._pos - self._window_start
            if start < 0:
                raise OSError("the image decoder seeked back past the bytes kept")
            data = self._window[start : start + want]
        buffer[: len(data)] = data
        self._pos += len(data)
        if self._keep_behind is not None and self._pos >= self.head_size:
            behind = self._pos - self._window_start - self._keep_behind
            if behind > self.trim_step:
                del self._window[:behind]
                self._window_start += behind
        return len(data)
