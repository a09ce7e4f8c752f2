"""Rendering and parameters, without HTTP: the decode budget, draft decoding, settling formats."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import pytest
from PIL import Image

from filesvc.decoding import DecodeBudget
from filesvc.errors import InvalidContent, InvalidRequest, PresetNotFound
from filesvc.variants import (
    DEFAULT_PRESETS,
    Preset,
    VariantQuery,
    VariantSpec,
    original_key_of,
    parse_query,
    resolve,
    settle,
    variant_key,
)
from filesvc.variants_render import ForwardSource, encodable_formats, render

MiB = 1024 * 1024
PRESETS = {name: Preset.model_validate(p) for name, p in DEFAULT_PRESETS.items()}
THUMB = VariantSpec(256, 256, "cover", "webp", 80)


def pull_from(data: bytes, chunk: int = 256 * 1024) -> Callable[[], bytes]:
    position = 0

    def pull() -> bytes:
        nonlocal position
        piece = data[position : position + chunk]
        position += len(piece)
        return piece

    return pull


@pytest.fixture(scope="module")
def twelve_megapixels() -> dict[str, bytes]:
    image = Image.linear_gradient("L").resize((4000, 3000)).convert("RGB")
    out = {}
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **({"quality": 80} if fmt == "JPEG" else {"compress_level": 1}))
        out[fmt] = buffer.getvalue()
    return out


def test_a_jpeg_thumbnail_never_decodes_at_full_size(twelve_megapixels: dict[str, bytes]) -> None:
    # 4000×3000 at 4 bytes a pixel is 48 MB; the budget holds a third of that.
    budget = DecodeBudget(16 * MiB, wait_seconds=0.1)
    rendered = render(pull_from(twelve_megapixels["JPEG"]), "image/jpeg", THUMB, budget, 10**8)
    assert (rendered.width, rendered.height) == (256, 256)
    assert budget.in_use == 0
    # PNG has no DCT scaling: the same image needs its full bitmap, which can never fit.
    with pytest.raises(InvalidContent, match="more than the limit"):
        render(pull_from(twelve_megapixels["PNG"]), "image/png", THUMB, budget, 10**8)
    assert budget.in_use == 0


def test_a_full_budget_waits_then_gives_up(twelve_megapixels: dict[str, bytes]) -> None:
    budget = DecodeBudget(16 * MiB, wait_seconds=0.2)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with budget.reserve(16 * MiB):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        with pytest.raises(Exception) as caught:
            render(pull_from(twelve_megapixels["JPEG"]), "image/jpeg", THUMB, budget, 10**8)
        assert getattr(caught.value, "status_code", None) == 503
    finally:
        release.set()
        holder.join()


def test_pixel_limit_and_garbage_are_422(twelve_megapixels: dict[str, bytes]) -> None:
    budget = DecodeBudget(64 * MiB, wait_seconds=0.1)
    with pytest.raises(InvalidContent, match="pixels"):
        render(pull_from(twelve_megapixels["JPEG"]), "image/jpeg", THUMB, budget, 1_000_000)
    broken = twelve_megapixels["JPEG"][:2000]
    with pytest.raises(InvalidContent):
        render(pull_from(broken), "image/jpeg", THUMB, budget, 10**8)


def test_forward_source_keeps_the_head_and_a_window() -> None:
    data = bytes(range(256)) * 40_000  # 10 MB
    source = ForwardSource(pull_from(data, 100_000))
    assert source.read(10) == data[:10]
    source.seek(5_000_000)
    assert source.read(4) == data[5_000_000:5_000_004]
    source.seek(100)  # within the head: still there
    assert source.read(4) == data[100:104]
    source.seek(9_000_000)
    source.read(10)
    source.seek(4_000_000)  # far behind the window
    with pytest.raises(OSError):
        source.read(4)


def test_query_parsing_and_canonical_form() -> None:
    assert parse_query({"expires": "1"}) is None
    query = parse_query({"q": "70", "w": "0640", "variant": "thumb", "format": "webp"})
    assert query == VariantQuery("thumb", 640, None, None, "webp", 70)
    assert query is not None and query.ad_hoc
    assert query.canonical() == "variant=thumb&w=640&format=webp&q=70"
    assert not VariantQuery("thumb").ad_hoc
    for bad in ({"w": "-1"}, {"w": "1e3"}, {"w": "١٢"}, {"variant": ""}, {"fit": "fill"}):
        with pytest.raises(InvalidRequest):
            parse_query({"variant": "thumb", **bad})
    with pytest.raises(InvalidRequest):
        parse_query({"q": "50"})  # neither a preset nor a size


def test_resolve_and_settle() -> None:
    with pytest.raises(PresetNotFound):
        resolve(VariantQuery("nope"), PRESETS)
    thumb = resolve(VariantQuery("thumb"), PRESETS)
    assert (thumb.width, thumb.height, thumb.fit, thumb.format) == (256, 256, "cover", "auto")
    wider = resolve(VariantQuery("thumb", w=512), PRESETS)
    assert (wider.width, wider.height) == (512, 256)
    with pytest.raises(InvalidRequest):
        resolve(VariantQuery(None, w=100, fit="cover"), PRESETS)
    formats = encodable_formats()
    spec, varies = settle(thumb, "image/png", "image/avif,image/webp", formats)
    assert varies and spec.format == ("avif" if "avif" in formats else "webp")
    spec, varies = settle(thumb, "image/gif", "*/*", formats)
    assert spec.format == "png" and spec.quality == 0
    spec, varies = settle(resolve(VariantQuery("thumb", format="jpeg"), PRESETS), "x", "", formats)
    assert not varies and spec.format == "jpeg" and spec.quality == 82


def test_variant_keys_name_their_original() -> None:
    key = variant_key("ab/cdef/file1", THUMB)
    assert key.startswith("variants/ab/cdef/file1/")
    assert original_key_of(key) == "ab/cdef/file1"
    assert original_key_of("ab/cdef/file1") is None
    assert variant_key("ab/cdef/file1", THUMB) != variant_key(
        "ab/cdef/file1", VariantSpec(256, 256, "cover", "webp", 81)
    )
