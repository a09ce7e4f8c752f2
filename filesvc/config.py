"""Settings, read from ``FILESVC_*`` environment variables and an optional ``.env``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from filesvc.sniffing import unknown_patterns
from filesvc.variants import DEFAULT_PRESETS, Preset

MiB = 1024 * 1024

#: The scope that implies every other one.
ADMIN = "admin"
#: Scopes an API key may carry.
SCOPES = ("files:write", "files:read", "exports:read", ADMIN)


def check_host_pattern(host: str) -> None:
    """A host name, or a wildcard pattern like ``*.example.com``."""
    if "*" in host.removeprefix("*.") or "/" in host or not host:
        raise ValueError(f"{host!r} is not a host name or a pattern like *.example.com")


def check_scopes(scopes: list[str]) -> None:
    """Refuse scopes this service does not know: a typo would silently grant nothing."""
    bad = sorted(set(scopes) - set(SCOPES))
    if bad:
        raise ValueError(f"unknown scope {', '.join(bad)}; known: {', '.join(SCOPES)}")


def _split_list(value: Any) -> Any:
    """Accept a JSON array or a comma-separated string for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class ExportColumns(BaseModel):
    """Which columns of an export table are offered: all, an allow-list, or all but a deny-list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_list(self) -> ExportColumns:
        if self.columns is not None and self.exclude:
            raise ValueError("give 'columns' or 'exclude', not both")
        if self.columns is not None and not self.columns:
            raise ValueError("'columns' may not be empty")
        return self

    def allows(self, name: str) -> bool:
        if self.columns is not None:
            return name in self.columns
        return name not in self.exclude


def _export_tables(value: Any) -> Any:
    """A JSON object ``{table: {}|{"columns": [...]}|{"exclude": [...]}}``, or a list of names."""
    if isinstance(value, str) and value.strip().startswith("{"):
        value = json.loads(value)
    if isinstance(value, dict):
        return value
    value = _split_list(value)
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return {name: {} for name in value}
    return value


class Settings(BaseSettings):
    """Every knob of the service. Field docs feed the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="FILESVC_", env_file=".env", extra="ignore", validate_default=True
    )

    environment: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses unsafe defaults (e.g. a missing signing key).",
    )
    data_dir: Path = Field(
        Path("./data"), description="Directory of the embedded database and local blobs."
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL; empty means `sqlite+aiosqlite:///<data_dir>/filesvc.db`.",
    )
    database_command_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds one PostgreSQL statement (or one fetch of an export's cursor) may "
        "take before it is cancelled.",
    )
    auto_migrate: bool | None = Field(
        None,
        description="Apply schema migrations at start-up; default: on for SQLite, off otherwise "
        "(run `filesvc migrate`).",
    )
    storage: Literal["local", "s3"] = Field("local", description="Where file bytes go.")
    s3_bucket: str = Field("", description="Bucket for `storage=s3`.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, Ceph, R2)."
    )
    s3_region: str | None = Field(None, description="S3 region.")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="S3 addressing style (`path` for most MinIO set-ups)."
    )
    s3_part_size: int = Field(
        8 * MiB,
        ge=5 * MiB,
        description="Multipart upload part size in bytes (minimum 5 MiB); raised when needed "
        "so that `max_upload_bytes` fits in S3's 10,000 parts.",
    )
    s3_max_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        description="Parts in flight per upload; the process's S3 worker threads and "
        "connections are 4 times this, at least 16.",
    )
    s3_redirect: bool = Field(
        False, description="Answer static URLs with a redirect to a presigned S3 URL."
    )
    s3_timeout: float = Field(
        10.0,
        gt=0,
        description="Connect/read timeout of S3 calls, seconds (each call is tried 3 times; "
        "completing a multipart upload may read for up to 300 s).",
    )
    max_upload_bytes: int = Field(
        100 * MiB, gt=0, description="Largest accepted file, in bytes (multipart framing excluded)."
    )
    max_batch_files: int = Field(20, ge=1, description="Most files in one batch upload.")
    max_image_pixels: int = Field(
        40_000_000, gt=0, description="Largest image (width × height) accepted; bigger is 422."
    )
    image_decode_budget_bytes: int = Field(
        256 * MiB,
        ge=MiB,
        description="Bytes of decoded images (bitmaps and decoder buffers) that may exist at "
        "once in one process; an image that needs more than all of it is 422.",
    )
    image_decode_wait: float = Field(
        10.0,
        ge=0,
        description="Seconds an image check waits for room in the decode budget before the "
        "upload is answered 503 with `Retry-After`.",
    )
    image_presets: dict[str, Preset] = Field(
        # Plain dicts (validated into presets): the README's table shows them as JSON.
        default_factory=lambda: {name: dict(p) for name, p in DEFAULT_PRESETS.items()},  # type: ignore[arg-type]
        description="Image variant presets served as `?variant=<name>`: a JSON object from name "
        'to `{"width", "height", "fit": "cover|contain|inside", "format": '
        '"auto|webp|avif|jpeg|png", "quality": 1-100}` (width or height may be left out for '
        "`inside`).",
    )
    strip_metadata: bool = Field(
        False,
        description="Strip metadata (EXIF but its orientation, GPS, XMP, IPTC, comments, text "
        "chunks) from JPEG, PNG, GIF and WebP uploads as they stream, without re-encoding "
        "pixels; the recorded `sha256` is that of the stored bytes.",
    )
    allowed_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["image/jpeg", "image/png", "image/gif", "image/webp"],
        description="Content types accepted, detected from the bytes (JSON array or a,b,c): "
        "types from the README's list, `type/*`, or `*/*` for anything.",
    )
    max_form_fields: int = Field(
        16, ge=1, description="Most non-file form fields in one multipart request."
    )
    max_field_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest non-file form field value, in bytes."
    )
    max_part_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest header block of one multipart part, in bytes."
    )
    body_timeout: float = Field(
        60.0, gt=0, description="Seconds an upload may wait for its next body chunk."
    )
    min_body_rate: int = Field(
        1024,
        ge=0,
        description="Slowest average rate of an upload body, in bytes per second, enforced "
        "once it has lasted `body_timeout` seconds (0 turns it off): cuts off trickling clients.",
    )
    body_deadline: float = Field(
        3600.0, gt=0, description="Seconds an upload body may take in all, however fast."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        le=16 * 1024 * 1024,
        description="Most bytes of a request's head (request line and headers); more is 431. "
        "Applies to `filesvc serve` (httptools).",
    )
    header_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a request's head may take from its first byte to its last; "
        "longer is 408. Applies to `filesvc serve` (httptools).",
    )
    send_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a response (file download, export, any body) may wait for the "
        "client to take more bytes; then it is aborted and its slot freed.",
    )
    api_keys: dict[str, list[str]] = Field(
        default_factory=dict,
        description='JSON object mapping API keys to scopes, e.g. `{"k1": ["files:write"]}`; '
        "empty runs the service open.",
    )
    signing_key: SecretStr | None = Field(
        None,
        description="HMAC key of signed URLs; in development one is generated under data_dir.",
    )
    public_base_url: str | None = Field(
        None, description="Base of absolute file URLs, e.g. `https://files.example.com`."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON array or a,b,c)."
    )
    trusted_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the service answers (`*.example.com` allowed; JSON array or "
        "a,b,c); empty accepts any Host.",
    )
    export_tables: Annotated[dict[str, ExportColumns], NoDecode] = Field(
        default_factory=dict,
        description="Extra tables or views offered as exports: a JSON array or a,b,c of names, "
        'or a JSON object from name to `{}` (every column), `{"columns": [...]}` (only these) '
        'or `{"exclude": [...]}` (all but these).',
    )
    export_fast_paths: bool = Field(
        True,
        description="Stream CSV exports through the database's C path (SQLite: ADBC + "
        "pyarrow; PostgreSQL: COPY); false takes the row path for every export (slower, "
        "some 70 MiB less memory on SQLite).",
    )
    max_concurrent_exports: int = Field(
        8,
        ge=1,
        description="Exports one process streams at once (each holds a database connection); "
        "one more is refused with 503.",
    )
    incomplete_upload_grace: float = Field(
        6 * 3600,
        ge=0,
        description="Seconds after which unfinished uploads left by a crash are swept at "
        "start-up, and unrecorded bytes count as orphans for `filesvc check`.",
    )
    upload_expires: int = Field(
        86400,
        ge=1,
        description="Seconds an unfinished resumable (tus) upload lives after its creation; "
        "then it is swept with its bytes and answers 410 or 404.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )

    @field_validator("allowed_types", "cors_origins", "trusted_hosts", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("export_tables", mode="before")
    @classmethod
    def _export_tables(cls, value: Any) -> Any:
        return _export_tables(value)

    @field_validator("allowed_types")
    @classmethod
    def _detectable(cls, value: list[str]) -> list[str]:
        unknown = unknown_patterns(value)
        if unknown:
            raise ValueError(
                f"cannot detect {', '.join(unknown)} from bytes; use types from the README's "
                "list, type/* or */*"
            )
        return value

    @field_validator("image_presets")
    @classmethod
    def _preset_names(cls, value: dict[str, Preset]) -> dict[str, Preset]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ValueError(f"{name!r} is not a preset name (letters, digits, - and _)")
        return value

    @field_validator("api_keys")
    @classmethod
    def _scopes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, scopes in value.items():
            if not key:
                raise ValueError("an API key may not be empty")
            check_scopes(scopes)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            check_host_pattern(host)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("signing_key")
    @classmethod
    def _nonempty_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty HMAC key is public knowledge: anyone could sign any URL.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("may not be empty; leave it unset to generate one in development")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Parsed here so a bad URL is the one line naming the variable, not
        # SQLAlchemy's traceback at start-up.
        if not value:
            return value
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL; e.g. postgresql+asyncpg://user:pass@host/db or "
                "sqlite+aiosqlite:///path/filesvc.db"
            ) from None
        if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
            raise ValueError(
                f"unsupported driver {url.drivername!r}; use postgresql+asyncpg:// or "
                "sqlite+aiosqlite:///"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("FILESVC_S3_BUCKET is required when FILESVC_STORAGE=s3")
        if self.incomplete_upload_grace < self.body_deadline:
            # A sweep with a shorter grace could delete the parts of an upload
            # that is still within its deadline, and is still being written.
            raise ValueError(
                f"FILESVC_INCOMPLETE_UPLOAD_GRACE ({self.incomplete_upload_grace:g}) must be at "
                f"least FILESVC_BODY_DEADLINE ({self.body_deadline:g}): a shorter grace would "
                "sweep uploads still in progress"
            )
        if self.environment == "production" and self.signing_key is None:
            raise ValueError("FILESVC_SIGNING_KEY is required when FILESVC_ENVIRONMENT=production")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'filesvc.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate


def describe_error(error: ValidationError) -> str:
    """One line naming the offending variable(s), for start-up failures."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        name = f"FILESVC_{field.upper()}" if field else "settings"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(parts)
