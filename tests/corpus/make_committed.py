"""Makes the committed files of the type-detection corpus (run by hand, not by the tests).

The tests build most of the corpus at run time (tests/corpus.py: images with
Pillow, archives and WAV with the standard library, text formats). What needs
an encoder or an office suite that CI does not have is made once by this
script and committed next to it; every file is small. It needs, besides the
project's dev install: ``pip install python-docx openpyxl python-pptx odfpy pillow-heif``
and Debian's ``ffmpeg`` and ``p7zip-full``. Run from the repository root:

    python tests/corpus/make_committed.py
"""

from __future__ import annotations

import importlib
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def office() -> None:
    # Imported by name: optional tools of this script only, untyped, absent from CI.
    docx = importlib.import_module("docx")
    openpyxl = importlib.import_module("openpyxl")
    pptx = importlib.import_module("pptx")
    odf = importlib.import_module("odf.opendocument")
    P = importlib.import_module("odf.text").P

    document = docx.Document()
    document.add_paragraph("filesvc corpus: a Word document.")
    document.save(HERE / "document.docx")

    book = openpyxl.Workbook()
    book.active.append(["name", "size"])
    book.active.append(["a.png", 123])
    book.save(HERE / "workbook.xlsx")

    deck = pptx.Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[5])
    slide.shapes.title.text = "filesvc corpus"
    deck.save(HERE / "slides.pptx")

    for cls, name in (
        (odf.OpenDocumentText, "document.odt"),
        (odf.OpenDocumentSpreadsheet, "sheet.ods"),
        (odf.OpenDocumentPresentation, "slides.odp"),
    ):
        doc = cls()
        if cls is odf.OpenDocumentText:
            doc.text.addElement(P(text="filesvc corpus"))
        doc.save(str(HERE / name))


def ffmpeg(name: str, *args: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args, str(HERE / name)], check=True
    )


def media() -> None:
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=0.3"]
    video = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=0.3"]
    ffmpeg("tone.mp3", *tone, "-c:a", "libmp3lame", "-b:a", "32k")
    ffmpeg("tone.ogg", *tone, "-c:a", "libvorbis", "-q:a", "0")
    ffmpeg("tone.opus", *tone, "-c:a", "libopus", "-b:a", "16k")
    ffmpeg("tone.flac", *tone, "-c:a", "flac")
    ffmpeg("tone.m4a", *tone, "-c:a", "aac", "-b:a", "32k")
    ffmpeg("clip.mp4", *video, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an")
    ffmpeg("clip.webm", *video, "-c:v", "libvpx-vp9", "-b:v", "50k", "-an")
    ffmpeg("clip.mkv", *video, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an")
    ffmpeg("clip.mov", *video, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an")
    ffmpeg("clip.avi", *video, "-c:v", "mjpeg", "-an")


def heic() -> None:
    from PIL import Image

    importlib.import_module("pillow_heif").register_heif_opener()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(HERE / "photo.heic", quality=50)


def sevenzip() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "notes.txt"
        source.write_text("filesvc corpus\n")
        target = HERE / "archive.7z"
        target.unlink(missing_ok=True)
        subprocess.run(["7z", "a", "-bd", "-bso0", str(target), str(source)], check=True)


if __name__ == "__main__":
    office()
    heic()
    media()
    sevenzip()
