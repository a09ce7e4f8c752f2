"""The README's settings table is generated from Settings, and must stay in step with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from filesvc.config import Settings
from filesvc.settings_doc import (
    BEGIN,
    END,
    env_name,
    generated_block,
    main,
    readme_block,
    settings_table,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_settings_table_matches_the_settings_class() -> None:
    block = readme_block(README.read_text(encoding="utf-8"))
    assert block is not None, f"README.md lost its {BEGIN} … {END} markers"
    assert block == generated_block(), (
        "README.md's settings table is out of date: run "
        "`.venv/bin/python -m filesvc.settings_doc --write README.md`"
    )


def test_every_setting_has_a_row_and_a_description() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert f"| `{env_name(name)}` |" in table
        assert field.description, f"Settings.{name} needs a description for the README"


def test_defaults_are_written_as_an_operator_would_set_them() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in settings_table().splitlines()}
    assert "| `./data` |" in rows["FILESVC_DATA_DIR"]
    assert "`104857600` (100 MiB)" in rows["FILESVC_MAX_UPLOAD_BYTES"]
    assert "`image/jpeg,image/png,image/gif,image/webp`" in rows["FILESVC_ALLOWED_TYPES"]
    assert "| `false` |" in rows["FILESVC_S3_REDIRECT"]
    assert "| unset |" in rows["FILESVC_SIGNING_KEY"]
    assert "One of `local`, `s3`." in rows["FILESVC_STORAGE"]


def test_module_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "filesvc.settings_doc"], capture_output=True, text=True, check=True
    )
    assert result.stdout == settings_table()


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{BEGIN}\n| stale |\n{END}\n\n## after\n", encoding="utf-8")
    assert main(["--write", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == f"# before\n\n{generated_block()}\n\n## after\n"
