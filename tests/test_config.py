"""Settings (filesvc/config.py): where values come from, what is refused, what is derived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from filesvc.config import SCOPES, Settings, describe_error
from filesvc.sniffing import DETECTABLE_TYPES


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def refusal(**values: Any) -> str:
    """The one-line start-up message for ``values``, which must be refused."""
    with pytest.raises(ValidationError) as raised:
        settings(**values)
    return describe_error(raised.value)


# Where values come from


def test_environment_variables_carry_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILESVC_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "99")  # without the prefix: not ours
    monkeypatch.setenv("FILESVC_NO_SUCH_SETTING", "x")  # unknown ones are ignored
    assert settings().max_upload_bytes == 1234


def test_a_dotenv_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("FILESVC_MAX_BATCH_FILES=7\nFILESVC_LOG_LEVEL=debug\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FILESVC_LOG_LEVEL", "error")
    from_file = Settings()
    assert from_file.max_batch_files == 7
    assert from_file.log_level == "error"


@pytest.mark.parametrize("name", ["cors_origins", "trusted_hosts", "export_tables"])
def test_lists_from_the_environment_as_json_or_commas(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    values = {
        "cors_origins": ["https://a.example.com", "http://localhost:5173"],
        "trusted_hosts": ["files.example.com", "*.example.net"],
        "export_tables": ["orders", "customers"],
    }[name]
    variable = f"FILESVC_{name.upper()}"
    monkeypatch.setenv(variable, f" {values[0]} ,, {values[1]} , ")
    # export_tables becomes a mapping from table to its column policy, in order.
    assert list(getattr(settings(), name)) == values
    monkeypatch.setenv(variable, f'["{values[0]}", "{values[1]}"]')
    assert list(getattr(settings(), name)) == values
    monkeypatch.setenv(variable, "")
    assert list(getattr(settings(), name)) == []


def test_api_keys_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILESVC_API_KEYS", '{"k-1": ["files:read"], "k-2": ["admin"]}')
    assert settings().api_keys == {"k-1": ["files:read"], "k-2": ["admin"]}


# What is refused, and how the refusal reads


@pytest.mark.parametrize(
    "value", ["https://app.example.com/", "app.example.com", "https://a.com/path", "ftp://a.com"]
)
def test_cors_origins_must_be_origins(value: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        settings(cors_origins=[value])


def test_cors_origins_accept_origins_and_the_wildcard() -> None:
    origins = ["https://app.example.com", "http://localhost:5173", "*"]
    assert settings(cors_origins=origins).cors_origins == origins


@pytest.mark.parametrize("value", ["*", "a.*.com", "*example.com", "files.example.com/x", ""])
def test_trusted_hosts_must_be_hosts(value: str) -> None:
    with pytest.raises(ValidationError, match="trusted_hosts"):
        settings(trusted_hosts=[value])


def test_trusted_hosts_accept_names_and_one_leading_wildcard() -> None:
    hosts = ["files.example.com", "*.cdn.example.net", "localhost"]
    assert settings(trusted_hosts=hosts).trusted_hosts == hosts


def test_allowed_types_must_be_detectable_from_bytes() -> None:
    message = refusal(allowed_types=["image/png", "application/x-made-up"])
    assert message.startswith(
        "invalid setting FILESVC_ALLOWED_TYPES: cannot detect application/x-made-up"
    )
    assert settings(allowed_types=sorted(DETECTABLE_TYPES)).allowed_types == sorted(
        DETECTABLE_TYPES
    )
    for pattern in (["*/*"], ["image/*", "text/csv"]):
        assert settings(allowed_types=pattern).allowed_types == pattern


def test_api_keys_need_a_key_and_known_scopes() -> None:
    assert "an API key may not be empty" in refusal(api_keys={"": ["admin"]})
    message = refusal(api_keys={"k": ["files:read", "files:everything"]})
    assert message.startswith("invalid setting FILESVC_API_KEYS: unknown scope files:everything")
    assert all(scope in message for scope in SCOPES)
    keys = {"k": list(SCOPES)}
    assert settings(api_keys=keys).api_keys == keys


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_an_empty_signing_key_is_refused(value: str) -> None:
    message = refusal(signing_key=value)
    assert message.startswith("invalid setting FILESVC_SIGNING_KEY: may not be empty")


def test_production_needs_a_signing_key() -> None:
    message = refusal(environment="production")
    assert message == (
        "invalid setting settings: "
        "FILESVC_SIGNING_KEY is required when FILESVC_ENVIRONMENT=production"
    )
    key = SecretStr("a-real-key")
    assert settings(environment="production", signing_key=key).signing_key == key


def test_s3_needs_a_bucket() -> None:
    assert "FILESVC_S3_BUCKET is required when FILESVC_STORAGE=s3" in refusal(storage="s3")
    assert settings(storage="s3", s3_bucket="b").s3_bucket == "b"


def test_public_base_url_is_http_and_loses_its_trailing_slash() -> None:
    assert "must start with http:// or https://" in refusal(public_base_url="files.example.com")
    assert settings(public_base_url="https://f.example.com/").public_base_url == (
        "https://f.example.com"
    )
    assert settings(public_base_url="http://f.example.com/base/").public_base_url == (
        "http://f.example.com/base"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("s3_part_size", 5 * 1024 * 1024 - 1),
        ("s3_max_concurrency", 0),
        ("s3_max_concurrency", 65),
        ("s3_timeout", 0),
        ("body_timeout", 0),
        ("min_body_rate", -1),
        ("max_batch_files", 0),
        ("database_command_timeout", 0),
        ("incomplete_upload_grace", -1),
        ("environment", "staging"),
        ("storage", "ftp"),
        ("log_level", "verbose"),
    ],
)
def test_values_out_of_range_are_refused_naming_the_variable(name: str, value: Any) -> None:
    assert refusal(**{name: value}).startswith(f"invalid setting FILESVC_{name.upper()}: ")


def test_every_problem_is_named_in_one_line() -> None:
    message = refusal(max_batch_files=0, log_level="verbose")
    assert "\n" not in message
    assert "FILESVC_MAX_BATCH_FILES: " in message and "FILESVC_LOG_LEVEL: " in message
    assert "Value error" not in refusal(signing_key="")


# What is derived


def test_the_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    embedded = settings(data_dir=tmp_path / "data")
    assert embedded.effective_database_url == (
        f"sqlite+aiosqlite:///{(tmp_path / 'data').resolve() / 'filesvc.db'}"
    )
    assert embedded.is_sqlite
    assert embedded.should_auto_migrate  # an embedded database migrates itself


def test_a_relative_data_dir_gives_an_absolute_database_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = settings(data_dir=Path("data")).effective_database_url
    assert url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'data' / 'filesvc.db'}"


def test_an_external_database_is_migrated_only_when_asked() -> None:
    url = "postgresql+asyncpg://filesvc@db.internal/filesvc"
    external = settings(database_url=url)
    assert external.effective_database_url == url
    assert not external.is_sqlite
    assert not external.should_auto_migrate  # run `filesvc migrate` instead
    assert settings(database_url=url, auto_migrate=True).should_auto_migrate
    assert not settings(auto_migrate=False).should_auto_migrate
