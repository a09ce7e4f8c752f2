"""Image variant parameters: presets, query values, output formats, storage keys.

Pure values and functions, no I/O: the route reads ``?variant=``, ``w``,
``h``, ``fit``, ``format`` and ``q`` with :func:`parse_query`, the signed-url
route signs :meth:`VariantQuery.canonical`, and a resolved
:class:`VariantSpec` names the stored object (:func:`variant_key`).

Anyone may ask for a preset (the operator bounded them); every other
parameter is ad hoc and needs a signature that covers it, so that nobody can
make the service render arbitrary sizes or formats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from filesvc.errors import InvalidRequest, PresetNotFound
from filesvc.sniffing import PILLOW_FORMATS

Fit = Literal["cover", "contain", "inside"]
OutputFormat = Literal["webp", "avif", "jpeg", "png"]
FormatChoice = Literal["webp", "avif", "jpeg", "png", "auto"]

FITS: tuple[str, ...] = get_args(Fit)
FORMAT_CHOICES: tuple[str, ...] = get_args(FormatChoice)
#: The query parameters of a variant, in canonical (signing) order.
QUERY_NAMES = ("variant", "w", "h", "fit", "format", "q")
#: Largest width or height a variant may have: bounds the output bitmap.
MAX_SIDE = 4096
#: Part of every variant key: bump it when rendering changes, so that stored
#: variants made by the old code are not served for the new parameters.
RENDER_VERSION = 1
#: Storage keys of variants live under this folder, then the original's key.
KEY_PREFIX = "variants/"

CONTENT_TYPES: dict[str, str] = {
    "webp": "image/webp",
    "avif": "image/avif",
    "jpeg": "image/jpeg",
    "png": "image/png",
}
EXTENSIONS: dict[str, str] = {"webp": "webp", "avif": "avif", "jpeg": "jpg", "png": "png"}
#: Quality when neither the preset nor the URL gives one (PNG is lossless: 0).
DEFAULT_QUALITY: dict[str, int] = {"webp": 80, "avif": 60, "jpeg": 82, "png": 0}
#: What ``format=auto`` falls back to when the client takes neither AVIF nor
#: WebP: the original's own format, PNG for those that are no output format.
_ORIGINAL_FORMATS: dict[str, OutputFormat] = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
}

#: Types a variant can be rendered from.
SOURCE_TYPES = frozenset(PILLOW_FORMATS)


def check_box(
    width: int | None, height: int | None, fit: str, error: type[Exception] = InvalidRequest
) -> None:
    if width is None and height is None:
        raise error("a variant needs a width, a height or both")
    if fit != "inside" and (width is None or height is None):
        raise error(f"fit={fit} needs both a width and a height")


class Preset(BaseModel):
    """One entry of ``FILESVC_IMAGE_PRESETS``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    fit: Fit = "inside"
    format: FormatChoice = "auto"
    quality: int | None = Field(None, ge=1, le=100)

    @model_validator(mode="after")
    def _box(self) -> Preset:
        check_box(self.width, self.height, self.fit, ValueError)
        return self


#: ``FILESVC_IMAGE_PRESETS``'s default, as its JSON would say it.
DEFAULT_PRESETS: dict[str, dict[str, int | str]] = {
    "thumb": {"width": 256, "height": 256, "fit": "cover"},
    "preview": {"width": 1280, "height": 1280, "fit": "inside"},
}


@dataclass(frozen=True, slots=True)
class VariantQuery:
    """The variant parameters of one URL, as given (validated, not yet resolved)."""

    variant: str | None = None
    w: int | None = None
    h: int | None = None
    fit: str | None = None
    format: str | None = None
    q: int | None = None

    @property
    def ad_hoc(self) -> bool:
        """Whether anything beyond a preset name is asked: only a signature allows that."""
        return any(v is not None for v in (self.w, self.h, self.fit, self.format, self.q))

    def canonical(self) -> str:
        """The parameters as signed and as put into URLs: fixed order, normalised values."""
        parts = []
        for name in QUERY_NAMES:
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return "&".join(parts)


def _integer(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}.")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}.")
    return value


def parse_query(values: Mapping[str, str]) -> VariantQuery | None:
    """The variant parameters of a query string; None when it asks for the original.

    Raises :class:`InvalidRequest` (400) for a malformed value. Whether the
    preset exists is checked by :func:`resolve`.
    """
    if not any(name in values for name in QUERY_NAMES):
        return None
    variant = values.get("variant")
    if variant is not None and not (0 < len(variant) <= 64 and variant.isprintable()):
        raise InvalidRequest("variant must name a preset.")
    w = _integer("w", values["w"], 1, MAX_SIDE) if "w" in values else None
    h = _integer("h", values["h"], 1, MAX_SIDE) if "h" in values else None
    q = _integer("q", values["q"], 1, 100) if "q" in values else None
    fit = values.get("fit")
    if fit is not None and fit not in FITS:
        raise InvalidRequest(f"fit must be one of {', '.join(FITS)}.")
    fmt = values.get("format")
    if fmt is not None and fmt not in FORMAT_CHOICES:
        raise InvalidRequest(f"format must be one of {', '.join(FORMAT_CHOICES)}.")
    query = VariantQuery(variant, w, h, fit, fmt, q)
    if variant is None and w is None and h is None:
        raise InvalidRequest("A variant needs a preset (variant=) or a size (w=, h=).")
    return query


@dataclass(frozen=True, slots=True)
class VariantRequest:
    """A variant with its format still a choice (``auto`` is settled per request)."""

    width: int | None
    height: int | None
    fit: Fit
    format: FormatChoice
    quality: int | None


def resolve(query: VariantQuery, presets: Mapping[str, Preset]) -> VariantRequest:
    """The preset, overridden value by value by the ad-hoc parameters.

    404 for an unknown preset, 400 for a box that cannot be fitted.
    """
    preset: Preset | None = None
    if query.variant is not None:
        preset = presets.get(query.variant)
        if preset is None:
            raise PresetNotFound(f"No image variant preset is named {query.variant!r}.")
    width = query.w if query.w is not None else (preset.width if preset else None)
    height = query.h if query.h is not None else (preset.height if preset else None)
    fit = query.fit or (preset.fit if preset else "inside")
    check_box(width, height, fit)
    fmt = query.format or (preset.format if preset else "auto")
    quality = query.q if query.q is not None else (preset.quality if preset else None)
    return VariantRequest(width, height, fit, fmt, quality)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """Exactly what to render: every value settled, so equal specs give equal bytes."""

    width: int | None
    height: int | None
    fit: Fit
    format: OutputFormat
    quality: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def digest(self) -> str:
        text = (
            f"{RENDER_VERSION}|{self.width or 0}|{self.height or 0}|{self.fit}|"
            f"{self.format}|{self.quality}"
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _accepts(accept: str, media_type: str) -> bool:
    """Whether ``Accept`` names ``media_type`` explicitly with a non-zero q.

    Wildcards do not count: ``*/*`` and ``image/*`` say nothing about which
    new formats a client decodes (browsers that do name AVIF and WebP).
    """
    for member in accept.split(","):
        kind, _, params = member.partition(";")
        if kind.strip().lower() != media_type:
            continue
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False
        return True
    return False


def settle(
    request: VariantRequest, original_type: str, accept: str | None, encodable: frozenset[str]
) -> tuple[VariantSpec, bool]:
    """The spec for this request, and whether it depended on ``Accept`` (``Vary: Accept``)."""
    fmt: OutputFormat
    varies = request.format == "auto"
    if request.format != "auto":
        fmt = request.format
        if fmt not in encodable:
            raise InvalidRequest(f"This server cannot encode {fmt}.")
    elif accept and "avif" in encodable and _accepts(accept, "image/avif"):
        fmt = "avif"
    elif accept and "webp" in encodable and _accepts(accept, "image/webp"):
        fmt = "webp"
    else:
        fmt = _ORIGINAL_FORMATS.get(original_type, "png")
        if fmt not in encodable:
            fmt = "png"
    quality = request.quality if request.quality is not None else DEFAULT_QUALITY[fmt]
    if fmt == "png":
        quality = 0  # lossless: a quality would only split the cache
    return VariantSpec(request.width, request.height, request.fit, fmt, quality), varies


def variant_key(original_key: str, spec: VariantSpec) -> str:
    """Where a variant is stored: beside its original's key, named by its parameters."""
    return f"{KEY_PREFIX}{original_key}/{spec.digest()}"


def variants_prefix(original_key: str) -> str:
    """The prefix of every variant key of one original."""
    return f"{KEY_PREFIX}{original_key}/"


def original_key_of(key: str) -> str | None:
    """The original's key of a variant key; None for any other key."""
    if not key.startswith(KEY_PREFIX):
        return None
    original, slash, digest = key[len(KEY_PREFIX) :].rpartition("/")
    if not slash or not original or len(digest) != 32:
        return None
    return original


def variant_filename(filename: str, spec: VariantSpec) -> str:
    """The original's name with the variant's extension, for ``Content-Disposition``."""
    stem, dot, _ = filename.rpartition(".")
    return f"{stem if dot and stem else filename}.{EXTENSIONS[spec.format]}"
