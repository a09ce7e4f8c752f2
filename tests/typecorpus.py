"""The type-detection corpus: real files of each detectable type, renamed files, polyglots.

Most files are made here at test time (Pillow for images and PDF, the
standard library for archives, WAV, SQLite and text); what needs an encoder
or an office suite is committed under ``tests/corpus/`` (made by
``tests/corpus/make_committed.py``). Each sample names the type it must be
detected as; its ``name`` is what a client would send and is never consulted.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import sqlite3
import tarfile
import tempfile
import wave
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image

COMMITTED = Path(__file__).resolve().parent / "corpus"


@dataclass(frozen=True)
class Sample:
    name: str
    data: bytes
    expected: str


def image(fmt: str, size: tuple[int, int] = (64, 48), **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, fmt, **options)
    return buffer.getvalue()


def _zip(entries: list[tuple[str, bytes]], *, stored_first: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index, (name, data) in enumerate(entries):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, method)
    return buffer.getvalue()


def _tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        data = b"filesvc corpus\n" * 40
        info = tarfile.TarInfo("notes.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(range(256)) * 16)
    return buffer.getvalue()


def _sqlite() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        connection.execute("INSERT INTO t VALUES (1, 'x')")
        connection.commit()
        connection.close()
        return path.read_bytes()


def _csv() -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "name", "size", "created_at"])
    for i in range(40):
        writer.writerow([i, f"file-{i}.png", i * 1000, f"2024-01-{i % 28 + 1:02d}T00:00:00Z"])
    return buffer.getvalue().encode()


def _tsv_utf16() -> bytes:
    rows = ["name\tcity\tamount"] + [f"row {i}\tZürich\t{i},50" for i in range(30)]
    return "\r\n".join(rows).encode("utf-16")


def _json() -> bytes:
    items = [{"id": i, "name": f"file-{i}.png", "tags": ["a", "b"]} for i in range(40)]
    return json.dumps({"items": items, "next_cursor": None}, indent=2).encode()


TEXT = (
    "Meeting notes, 3 December\n\n"
    "We agreed to ship the café menu in UTF-8 (naïve readers, 東京 office).\n"
    "Open questions: who owns the export panel; whether Excel needs a BOM.\n"
    "Next steps\n- measure type detection\n- write the README table\n"
) * 8

HTML = (
    b"<!DOCTYPE html>\n<html><head><title>x</title></head>"
    b"<body><script>alert(1)</script></body></html>\n"
)
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script><rect width='10' height='10'/></svg>\n"
)
JAVASCRIPT = b'#!/usr/bin/env node\n"use strict";\nconst x = 1;\nconsole.log(x);\n'
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<note><to>a</to><body>b</body></note>\n'


def _epub() -> bytes:
    container = (
        b'<?xml version="1.0"?><container version="1.0" '
        b'xmlns="urn:oasis:names:tc:opendocument:xmlns:container"><rootfiles>'
        b'<rootfile full-path="content.opf" media-type="application/oebps-package+xml"/>'
        b"</rootfiles></container>"
    )
    return _zip(
        [("mimetype", b"application/epub+zip"), ("META-INF/container.xml", container)],
        stored_first=True,
    )


def _committed(name: str, content_type: str) -> Sample:
    """The sample of a file kept in the repository (no generator for its type here)."""
    return Sample(name, (COMMITTED / name).read_bytes(), content_type)


@cache
def real_files() -> tuple[Sample, ...]:
    """One real file of each detectable type (the README's table is checked against it)."""
    png = image("PNG")
    return (
        Sample("photo.jpg", image("JPEG"), "image/jpeg"),
        Sample("image.png", png, "image/png"),
        Sample("anim.gif", image("GIF"), "image/gif"),
        Sample("image.webp", image("WEBP"), "image/webp"),
        Sample("image.bmp", image("BMP"), "image/bmp"),
        Sample("image.tif", image("TIFF"), "image/tiff"),
        Sample("image.avif", image("AVIF"), "image/avif"),
        _committed("photo.heic", "image/heic"),
        Sample("favicon.ico", image("ICO", (32, 32)), "image/vnd.microsoft.icon"),
        Sample("drawing.svg", SVG, "image/svg+xml"),
        Sample("scan.pdf", image("PDF"), "application/pdf"),
        _committed("document.docx", DOCX),
        _committed("workbook.xlsx", XLSX),
        _committed("slides.pptx", PPTX),
        _committed("document.odt", "application/vnd.oasis.opendocument.text"),
        _committed("sheet.ods", "application/vnd.oasis.opendocument.spreadsheet"),
        _committed("slides.odp", "application/vnd.oasis.opendocument.presentation"),
        Sample("book.epub", _epub(), "application/epub+zip"),
        Sample("bundle.zip", _zip([("a.txt", b"a" * 100), ("b.txt", b"b")]), "application/zip"),
        Sample("notes.txt.gz", gzip.compress(b"filesvc\n" * 100, mtime=0), "application/gzip"),
        Sample("notes.tar", _tar(), "application/x-tar"),
        Sample("notes.bz2", bz2.compress(b"filesvc\n" * 100), "application/x-bzip2"),
        Sample("notes.xz", lzma.compress(b"filesvc\n" * 100), "application/x-xz"),
        _committed("archive.7z", "application/x-7z-compressed"),
        Sample("data.sqlite", _sqlite(), "application/vnd.sqlite3"),
        Sample("tone.wav", _wav(), "audio/wav"),
        _committed("tone.mp3", "audio/mpeg"),
        _committed("tone.ogg", "audio/ogg"),
        _committed("tone.opus", "audio/ogg"),
        _committed("tone.flac", "audio/flac"),
        _committed("tone.m4a", "audio/mp4"),
        _committed("clip.mp4", "video/mp4"),
        _committed("clip.webm", "video/webm"),
        _committed("clip.mkv", "video/x-matroska"),
        _committed("clip.mov", "video/quicktime"),
        _committed("clip.avi", "video/x-msvideo"),
        Sample("table.csv", _csv(), "text/csv"),
        # Excel's "Unicode Text" export: UTF-16 with a BOM, tab-separated.
        Sample("export.txt", _tsv_utf16(), "text/tab-separated-values"),
        Sample("items.json", _json(), "application/json"),
        Sample("notes.txt", TEXT.encode(), "text/plain"),
        Sample("page.html", HTML, "text/html"),
        Sample("note.xml", XML, "text/xml"),
        Sample("script.js", JAVASCRIPT, "text/plain"),
    )


DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
