from __future__ import annotations

import pytest

from filesvc.pipeline import new_file_id, parse_repr_digest, sanitize_filename
from filesvc.sniffing import detect
from tests.images import FORMATS, make_image


@pytest.mark.parametrize("content_type", sorted(FORMATS))
def test_detects_images_from_bytes(content_type: str) -> None:
    assert detect(make_image(content_type)[:16]) == content_type


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"%PDF-1.7\n", "application/pdf"),
        (b"RIFF\0\0\0\0WAVEfmt ", None),
        (b"<svg", None),
        (b"", None),
        (b"GIF8", None),
    ],
)
def test_detect_edge_cases(head: bytes, expected: str | None) -> None:
    assert detect(head) == expected


def test_ids_are_url_safe_and_never_formula_like() -> None:
    for _ in range(1000):
        file_id = new_file_id()
        assert len(file_id) == 26 and file_id.isalnum() and file_id[0] not in "-=+@"


def test_repr_digest_parsing() -> None:
    assert parse_repr_digest(None) is None
    assert parse_repr_digest("sha-512=:AAAA:") is None
    value = "sha-512=:AAAA:, sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    assert parse_repr_digest(value) == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, "file"),
        ("C:\\Users\\me\\a.png", "a.png"),
        (" .hidden ", "hidden"),
        ("tab\there.png", "tabhere.png"),
        ("\u200bzero\u200dwidth.png", "zerowidth.png"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected
