"""Signed URLs for private files: HMAC-SHA256 over the file id and the expiry."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from filesvc.config import Settings
from filesvc.errors import InvalidSignature

logger = logging.getLogger("filesvc")

#: The longest a signed URL may live: also S3's limit for the presigned URLs they lead to.
MAX_SIGNED_SECONDS = 7 * 24 * 3600

#: File under the data directory holding the generated development key.
KEY_FILE = "signing.key"


def load_signing_key(settings: Settings) -> bytes:
    """The configured key; in development, one generated once and kept in the data directory."""
    if settings.signing_key is not None:
        return settings.signing_key.get_secret_value().encode()
    path = settings.data_dir / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker won the race
        return _read_key(path)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    logger.warning("FILESVC_SIGNING_KEY is not set: generated one in %s", path)
    return key


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        # Left by a crash between creating and writing it, or being written right
        # now: an empty HMAC key would let anyone sign any URL.
        raise RuntimeError(f"the signing key file {path} is empty; delete it to generate one")
    return key


def signature(key: bytes, file_id: str, expires: int, variant: str = "") -> str:
    """The HMAC of a file's URL until ``expires``; ``variant`` is its canonical variant query."""
    message = f"{file_id}:{expires}:{variant}" if variant else f"{file_id}:{expires}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def verify(
    key: bytes,
    file_id: str,
    expires: str | None,
    given: str | None,
    variant: str = "",
    *,
    file_signature_covers: bool = False,
) -> None:
    """Raise :class:`InvalidSignature` unless ``given`` signs ``file_id`` until ``expires``.

    With ``variant``, the signature must cover those variant parameters; with
    ``file_signature_covers`` (a preset, which anyone may ask of a public
    file), the file's own signature is good too.
    """
    if expires is None or given is None:
        raise InvalidSignature()
    try:
        moment = int(expires)
    except ValueError as exc:
        raise InvalidSignature() from exc
    offered = given.encode("utf-8", "replace")
    expected = signature(key, file_id, moment, variant)
    good = hmac.compare_digest(expected.encode(), offered)
    if variant and file_signature_covers:
        plain = signature(key, file_id, moment)
        good = hmac.compare_digest(plain.encode(), offered) or good
    if not good:
        raise InvalidSignature()
    if moment < time.time():
        raise InvalidSignature("The signed URL has expired.")
