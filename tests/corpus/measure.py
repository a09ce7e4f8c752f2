"""Accuracy and cost of type-detection libraries on the corpus (the README's table).

    pip install puremagic filetype      # the candidates that are not dependencies
    python -m tests.corpus.measure

Each candidate gets what the upload pipeline gives ``detect()``: a file's first
``SNIFF_BYTES`` bytes. Answers are compared after mapping each library's
aliases to the names filesvc records (``audio/x-wav`` is ``audio/wav``), so a
library is only wrong when it names another type or none. Cost is CPU time per
call in this process: the mean over the corpus, and the worst over hostile heads
(runs of one character, random bytes) that make some detectors slow.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable

import magic

from filesvc.sniffing import _ALIASES, OCTET_STREAM, SNIFF_BYTES, detect
from tests.typecorpus import Sample, real_files

Detector = Callable[[bytes], str]

# Every other library's names for the corpus's types.
ALIASES = {
    **_ALIASES,
    "audio/x-flac": "audio/flac",
    "audio/wave": "audio/wav",
    "application/ogg": "audio/ogg",
    "video/avi": "video/x-msvideo",
    "application/x-sqlite3": "application/vnd.sqlite3",
    "application/xml": "text/xml",
    "application/javascript": "text/plain",
    "text/x-script.python": "text/plain",
    "": OCTET_STREAM,
}


def candidates() -> dict[str, Detector]:
    full = magic.Magic(mime=True)
    found: dict[str, Detector] = {
        "filesvc (libmagic binary tests + text rule)": detect,
        "python-magic, libmagic's defaults": full.from_buffer,
    }
    try:
        puremagic = importlib.import_module("puremagic")
    except ImportError:
        print("puremagic is not installed: skipped")
    else:

        def pure(head: bytes) -> str:
            try:
                return str(puremagic.from_string(head, mime=True))
            except puremagic.PureError:
                return OCTET_STREAM

        found["puremagic"] = pure
    try:
        filetype = importlib.import_module("filetype")
    except ImportError:
        print("filetype is not installed: skipped")
    else:
        found["filetype"] = lambda head: filetype.guess_mime(head) or OCTET_STREAM
    return found


def longer_than_the_head() -> list[Sample]:
    rows = [{"id": i, "name": f"file-{i}.png", "tags": ["a", "b"]} for i in range(4000)]
    table = "".join(f"{i},file-{i}.png,{i * 1000}\n" for i in range(20_000))
    return [
        Sample("big.json", json.dumps(rows).encode(), "application/json"),
        Sample("big.csv", b"id,name,size\n" + table.encode(), "text/csv"),
        Sample("excel-fr.csv", "nom;prix\ncafé;2,50\nthé;3,00\n".encode("cp1252"), "text/csv"),
    ]


HOSTILE = {
    "newlines": b"\n",
    "spaces": b" ",
    "tabs": b"\t",
    "angles": b"<",
    "brackets": b"[",
    "quotes": b'"',
    "zeros": b"\0",
}


def cpu_ms(detector: Detector, head: bytes, repeat: int) -> float:
    started = time.process_time()
    for _ in range(repeat):
        detector(head)
    return (time.process_time() - started) / repeat * 1000


def main() -> None:
    samples = [*real_files(), *longer_than_the_head()]
    hostile = {name: ch * SNIFF_BYTES for name, ch in HOSTILE.items()}
    hostile["random"] = os.urandom(SNIFF_BYTES)
    print(f"{len(samples)} files, heads of {SNIFF_BYTES} bytes; CPU ms per call\n")
    print("| detector | right | mean | worst hostile head | wrong or unknown |")
    print("| --- | --- | --- | --- | --- |")
    for name, detector in candidates().items():
        wrong = []
        for sample in samples:
            answer = detector(sample.data[:SNIFF_BYTES])
            if ALIASES.get(answer, answer) != sample.expected:
                wrong.append(sample.name)
        mean = sum(cpu_ms(detector, s.data[:SNIFF_BYTES], 5) for s in samples) / len(samples)
        costs = {kind: cpu_ms(detector, head, 3) for kind, head in hostile.items()}
        worst = max(costs, key=lambda kind: costs[kind])
        right = len(samples) - len(wrong)
        print(
            f"| {name} | {right}/{len(samples)} | {mean:.2f} | {costs[worst]:.1f} ({worst}) "
            f"| {', '.join(wrong) or '—'} |"
        )


if __name__ == "__main__":
    main()
