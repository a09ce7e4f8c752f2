"""A SHA-256 whose running state can be stored and taken up by another process.

hashlib objects neither pickle nor expose their state, so a resumable upload
whose requests land on different processes could only hash the whole file
again at the end. ``rehashes`` (Rust's ``sha2``, BSD-3-Clause) serialises its
state to about a hundred bytes and hashes as fast as hashlib here. It holds the
GIL while it hashes, so callers feed it in slices of at most :data:`SLICE`
bytes from a worker thread: the event loop waits at most one slice's hashing.
"""

from __future__ import annotations

import rehashes  # type: ignore[import-untyped]

#: Largest slice hashed in one call (about a millisecond).
SLICE = 1024 * 1024


class ResumableSha256:
    def __init__(self, state: bytes | None = None) -> None:
        self._hash = rehashes.PySha256() if state is None else rehashes.PySha256.deserialize(state)

    def update(self, data: bytes) -> None:
        """Blocking: call from a worker thread."""
        if len(data) <= SLICE:
            self._hash.update(data)
            return
        view = memoryview(data)
        for start in range(0, len(data), SLICE):
            self._hash.update(bytes(view[start : start + SLICE]))

    def state(self) -> bytes:
        return bytes(self._hash.serialize())

    def hexdigest(self) -> str:
        """The digest of everything fed so far (the state is kept)."""
        return str(rehashes.PySha256.deserialize(self.state()).finalize())
