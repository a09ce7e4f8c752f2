"""The tus 1.0.0 protocol's headers: parsed strictly, as pure functions.

Every function raises :class:`filesvc.errors.InvalidRequest` (400) for a value
that does not parse, never guesses: a malformed ``Upload-Checksum`` or
``Upload-Metadata`` is refused, not ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Final

from filesvc.errors import FilesvcError, InvalidRequest

TUS_VERSION: Final = "1.0.0"
TUS_EXTENSIONS: Final = (
    "creation",
    "creation-with-upload",
    "termination",
    "checksum",
    "expiration",
)
#: Algorithms of the checksum extension; the names tus clients send.
CHECKSUM_ALGORITHMS: Final = ("sha1", "sha256")
PATCH_CONTENT_TYPE: Final = "application/offset+octet-stream"
#: Longest Upload-Metadata header accepted (tus-js-client sends a few hundred bytes).
MAX_METADATA_BYTES: Final = 4096
_DIGITS = re.compile(r"[0-9]{1,19}")
_METADATA_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGEST_SIZES = {"sha1": 20, "sha256": 32}


class UnsupportedVersion(FilesvcError):
    status_code = 412
    code = "unsupported_tus_version"
    message = f"This server speaks tus {TUS_VERSION} only: send Tus-Resumable: {TUS_VERSION}."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Tus-Version": TUS_VERSION})


def check_resumable(value: str | None) -> None:
    """Every request but OPTIONS must say which protocol version it speaks (412 otherwise)."""
    if value is None or value.strip() != TUS_VERSION:
        raise UnsupportedVersion()


def parse_count(value: str | None, header: str) -> int:
    """A non-negative decimal integer header such as ``Upload-Length``."""
    if value is None:
        raise InvalidRequest(f"The {header} header is required.")
    text = value.strip()
    if not _DIGITS.fullmatch(text):
        raise InvalidRequest(f"The {header} header must be a non-negative integer.")
    return int(text)


def parse_metadata(value: str | None) -> dict[str, str | None]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs (value optional).

    Keys must be unique tokens; values must be strict base64 of UTF-8 text.
    """
    if value is None or not value.strip():
        return {}
    if len(value.encode("latin-1", "replace")) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes.")
    pairs: dict[str, str | None] = {}
    for item in value.split(","):
        parts = item.strip().split(" ")
        if len(parts) > 2 or not _METADATA_KEY.fullmatch(parts[0]):
            raise InvalidRequest("Upload-Metadata must be comma-separated 'key base64value' pairs.")
        key = parts[0]
        if key in pairs:
            raise InvalidRequest(f"Upload-Metadata names {key!r} twice.")
        if len(parts) == 1:
            pairs[key] = None
            continue
        try:
            raw = base64.b64decode(parts[1], validate=True)
            pairs[key] = raw.decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"Upload-Metadata {key!r} is not base64 of UTF-8 text.") from exc
    return pairs


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes


def parse_checksum(value: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; 400 for anything else."""
    if value is None:
        return None
    parts = value.strip().split(" ")
    if len(parts) != 2:
        raise InvalidRequest("Upload-Checksum must be '<algorithm> <base64 digest>'.")
    algorithm, encoded = parts[0].lower(), parts[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise InvalidRequest(
            f"Upload-Checksum algorithm {parts[0]!r} is not supported; "
            f"supported: {', '.join(CHECKSUM_ALGORITHMS)}."
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("Upload-Checksum's digest is not valid base64.") from exc
    if len(digest) != _DIGEST_SIZES[algorithm]:
        raise InvalidRequest(
            f"Upload-Checksum's {algorithm} digest must be {_DIGEST_SIZES[algorithm]} bytes."
        )
    return Checksum(algorithm, digest)


def http_date(moment: datetime) -> str:
    """``Upload-Expires`` is an RFC 9110 HTTP-date."""
    return format_datetime(moment, usegmt=True)
