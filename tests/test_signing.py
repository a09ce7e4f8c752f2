"""The signing key of signed URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from filesvc.config import Settings
from filesvc.signing import KEY_FILE, load_signing_key


def test_a_generated_key_is_kept_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    key = load_signing_key(settings)
    assert len(key) >= 32
    assert load_signing_key(settings) == key == (tmp_path / KEY_FILE).read_bytes()


def test_an_empty_key_file_is_refused_not_used(tmp_path: Path) -> None:
    # An empty HMAC key would let anyone sign a URL to any private file.
    (tmp_path / KEY_FILE).write_bytes(b"\n")
    with pytest.raises(RuntimeError, match="is empty"):
        load_signing_key(Settings(data_dir=tmp_path))
