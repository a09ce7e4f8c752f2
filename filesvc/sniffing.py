"""Content-type detection from a file's first bytes.

The client's ``Content-Type`` header and file name are never consulted: only
the bytes decide. Binary formats are recognised by libmagic (the library behind
``file(1)``, through python-magic), text formats by the rule in
:func:`_text_type`. Every upload gets exactly one type from :data:`TYPES`;
bytes that nothing recognises are ``application/octet-stream``.

libmagic runs with its text tests off: on some text (long runs of newlines or
spaces) they cost far more CPU than the rest of an upload, and they need a
whole JSON document where an upload's head holds only a prefix. Its binary
tests are cheap, and bounded by :data:`SNIFF_BYTES` on hostile input (the
README gives the measurements).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
import threading

import magic

#: How many leading bytes :func:`detect` needs to decide. The upload pipeline
#: buffers this much before judging (less only when the file is shorter).
#: Office files (docx, xlsx, pptx, epub) are told apart from a plain zip by the
#: names of their first entries, which Office, LibreOffice and python-docx
#: write within the first few KiB; 64 KiB leaves room for a large first entry.
SNIFF_BYTES = 64 * 1024

#: Types whose content Pillow must decode before the upload is accepted.
RASTER_IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/tiff"}
)

#: Pillow's format name for each raster type: a decoded image must match it.
PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}

OCTET_STREAM = "application/octet-stream"
TSV = "text/tab-separated-values"
#: What :func:`_text_type` decides; libmagic's word is not taken for these.
_TEXT_RULE_TYPES = frozenset(
    {"text/plain", "text/csv", TSV, "application/json", "text/html", "text/xml", OCTET_STREAM}
)

#: Every type :func:`detect` can answer, with what it is (the README's table).
TYPES: dict[str, str] = {
    "image/jpeg": "JPEG image",
    "image/png": "PNG image",
    "image/gif": "GIF image",
    "image/webp": "WebP image",
    "image/bmp": "BMP image",
    "image/tiff": "TIFF image",
    "image/avif": "AVIF image",
    "image/heic": "HEIC image (iPhone photos)",
    "image/vnd.microsoft.icon": "Windows icon (.ico)",
    "image/svg+xml": "SVG drawing",
    "application/pdf": "PDF document",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word (.docx)",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "Excel (.xlsx)",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "PowerPoint (.pptx)"
    ),
    "application/vnd.oasis.opendocument.text": "OpenDocument text (.odt)",
    "application/vnd.oasis.opendocument.spreadsheet": "OpenDocument spreadsheet (.ods)",
    "application/vnd.oasis.opendocument.presentation": "OpenDocument presentation (.odp)",
    "application/epub+zip": "EPUB book",
    "application/zip": "zip archive",
    "application/gzip": "gzip",
    "application/x-tar": "tar archive",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/x-7z-compressed": "7-Zip archive",
    "application/vnd.sqlite3": "SQLite database",
    "audio/wav": "WAV audio",
    "audio/mpeg": "MP3 audio",
    "audio/ogg": "Ogg audio (Vorbis, Opus)",
    "audio/flac": "FLAC audio",
    "audio/mp4": "MPEG-4 audio (.m4a)",
    "video/mp4": "MP4 video",
    "video/webm": "WebM video",
    "video/x-matroska": "Matroska video (.mkv)",
    "video/quicktime": "QuickTime video (.mov)",
    "video/x-msvideo": "AVI video",
    "text/plain": "text (UTF-8, UTF-16 with BOM, or an 8-bit encoding)",
    "text/csv": "CSV (comma or semicolon)",
    TSV: "tab-separated values",
    "application/json": "JSON (object or array)",
    "text/html": "HTML",
    "text/xml": "XML",
    OCTET_STREAM: "bytes that nothing above recognises, and empty files",
}

DETECTABLE_TYPES = frozenset(TYPES)

#: Accepts every type in ``FILESVC_ALLOWED_TYPES``.
ANY_TYPE = "*/*"

# Signatures long enough never to open a text file ("BM" for BMP would).
_RASTER_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)

#: libmagic's name for a type where it differs from the one recorded here.
_ALIASES = {
    "audio/x-wav": "audio/wav",
    "audio/x-m4a": "audio/mp4",
    "image/x-ms-bmp": "image/bmp",
    "image/x-icon": "image/vnd.microsoft.icon",
    "application/x-gzip": "application/gzip",
}

# Text tests off (see the module docstring); compressed files are not opened.
_MAGIC_FLAGS = (
    magic.MAGIC_MIME_TYPE
    | magic.MAGIC_NO_CHECK_COMPRESS
    | 0x0020000  # MAGIC_NO_CHECK_TEXT
    | 0x0080000  # MAGIC_NO_CHECK_CSV
    | 0x0100000  # MAGIC_NO_CHECK_TOKENS
    | 0x0200000  # MAGIC_NO_CHECK_ENCODING
    | 0x0400000  # MAGIC_NO_CHECK_JSON
)


class _Magic:
    """One libmagic handle; libmagic handles are not thread-safe, so calls take turns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cookie = magic.magic_open(_MAGIC_FLAGS)
        magic.magic_load(self._cookie, None)

    def __call__(self, head: bytes) -> str:
        try:
            with self._lock:
                result = magic.magic_buffer(self._cookie, head)
        except magic.MagicException:  # libmagic gave up: unrecognised, not a server error
            return ""
        name = result.decode() if isinstance(result, bytes) else str(result or "")
        return _ALIASES.get(name, name)


# Loading maps the compiled database, which is cheap: done at import, so that a
# missing libmagic stops start-up instead of failing the first upload.
_libmagic = _Magic()


def detect(head: bytes) -> str:
    """The type of the file whose first bytes are ``head``: one of :data:`TYPES`.

    ``head`` is the file's first :data:`SNIFF_BYTES` bytes, or the whole file
    when it is shorter. CPU-bound: call it from a worker thread.
    """
    head = head[:SNIFF_BYTES]
    if not head:
        return OCTET_STREAM
    found = _libmagic(head)
    if found in TYPES and found not in _TEXT_RULE_TYPES:
        return found
    # libmagic wants more than a signature (a PNG's IHDR, say); a file that opens
    # with one still claims to be that image, so Pillow judges it (422, not 415).
    for signature, content_type in _RASTER_SIGNATURES:
        if head.startswith(signature):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return _text_type(head, complete=len(head) < SNIFF_BYTES) or OCTET_STREAM


def allows(allowed: list[str] | frozenset[str], content_type: str) -> bool:
    """Whether ``FILESVC_ALLOWED_TYPES`` (``type/sub``, ``type/*`` or ``*/*``) admits a type."""
    major = content_type.partition("/")[0]
    return ANY_TYPE in allowed or content_type in allowed or f"{major}/*" in allowed


def unknown_patterns(allowed: list[str]) -> list[str]:
    """Entries of ``FILESVC_ALLOWED_TYPES`` that :func:`detect` can never answer."""
    majors = {t.partition("/")[0] for t in TYPES}
    return sorted(
        entry
        for entry in set(allowed)
        if entry != ANY_TYPE
        and entry not in TYPES
        and not (entry.endswith("/*") and entry[:-2] in majors)
    )


# C0 controls other than TAB, LF, VT, FF, CR and ESC (coloured logs) mean binary.
_BINARY_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
# The WHATWG MIME Sniffing standard's HTML openings (§7.1), tag names case-insensitive.
_HTML = re.compile(
    r"<(?:!doctype\s+html|html|head|script|iframe|h1|div|font|table|a|style|title|b|body|br|p"
    r"|!--)[\s>]",
    re.IGNORECASE,
)
# Skipped before an XML root element: the declaration, comments, doctype, processing.
_XML_PROLOGUE = re.compile(
    r"(?:\s+|<\?[^>]{0,4096}\?>|<!--.{0,4096}?-->|<!DOCTYPE[^>]{0,4096}>)*", re.DOTALL
)
_CSV_ROWS = 20


def _decode(head: bytes, complete: bool) -> str | None:
    """The text of ``head``, or None when its bytes are not text.

    UTF-8 (a sequence cut by the end of a partial head is dropped), UTF-16 with
    a byte-order mark, else any 8-bit encoding read as Latin-1 (Windows-1252
    CSVs from Excel are text too). Control characters decide binary.
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        decoder = codecs.getincrementaldecoder("utf-16")()
        try:
            text = decoder.decode(head, final=complete)
        except UnicodeDecodeError:
            return None
    else:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        try:
            text = decoder.decode(head, final=complete)
        except UnicodeDecodeError:
            text = head.decode("latin-1")
    return None if _BINARY_CONTROLS.search(text) else text


def _text_type(head: bytes, complete: bool) -> str | None:
    """text/html, image/svg+xml, text/xml, application/json, text/csv, TSV or text/plain."""
    text = _decode(head, complete)
    if text is None:
        return None
    start = text.lstrip()
    if start.startswith("<"):
        prologue = _XML_PROLOGUE.match(start)
        if prologue is not None and re.match(r"<svg[\s>/]", start[prologue.end() :]):
            return "image/svg+xml"
        if _HTML.match(start):
            return "text/html"
        if start.startswith("<?xml"):
            return "text/xml"
    if start[:1] in ("{", "[") and _json_prefix(start.rstrip(), complete):
        return "application/json"
    return _table_type(text, complete) or "text/plain"


def _json_prefix(text: str, complete: bool) -> bool:
    """Whether ``text`` is a JSON document, or (when ``complete`` is false) its start."""
    try:
        json.loads(text)
        return True
    except json.JSONDecodeError:
        if complete:
            return False
    except RecursionError:  # nested deeper than the parser goes: not worth the name
        return False
    # Cut back to the last structural character so that no token is half there,
    # then the only error allowed is "the document goes on" at the very end.
    cut = max(text.rfind(ch) for ch in ",[{:")
    prefix = text[: cut + 1]
    try:
        json.loads(prefix)
    except json.JSONDecodeError as exc:
        return exc.pos >= len(prefix) or exc.msg == "Unterminated string starting at"
    except RecursionError:
        return False
    return True


def _table_type(text: str, complete: bool) -> str | None:
    """text/csv or TSV: two rows or more, each with the same number (≥ 2) of fields.

    Judged on the first rows only; a row cut by the end of a partial head does
    not count.
    """
    for delimiter, content_type in ((",", "text/csv"), (";", "text/csv"), ("\t", TSV)):
        reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
        try:
            rows = list(itertools.islice(reader, _CSV_ROWS + 1))
        except csv.Error:  # e.g. a quote opened and never closed within the head
            if complete:
                continue
            rows = []
        if not complete and len(rows) <= _CSV_ROWS:
            rows = rows[:-1]  # the last row may be cut short by the end of the head
        widths = {len(row) for row in rows if row}
        if len(widths) == 1 and sum(1 for row in rows if row) >= 2 and widths.pop() >= 2:
            return content_type
    return None


def types_table() -> str:
    """The README's table of detectable types (a test keeps the README equal to it)."""
    lines = ["| type | what |", "| --- | --- |"]
    lines += [f"| `{content_type}` | {what} |" for content_type, what in TYPES.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(types_table())
