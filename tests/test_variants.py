"""Image variants over HTTP: presets, formats, signatures, privacy, storage, deletion.

Every image is made with Pillow at test time. The suite runs on local disk
and on S3 (moto's server over HTTP), with SQLite: the database is no part of
what variants do.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from typing import Any

import httpx
import pytest
from PIL import Image, ImageCms

from filesvc.config import Settings
from filesvc.consistency import check
from filesvc.db import create_engine, create_session_factory
from filesvc.signing import signature
from filesvc.storage import Storage, create_storage, open_writer
from filesvc.variants import variants_prefix
from filesvc.variants_store import HEADER_SIZE
from tests.conftest import ServerFactory
from tests.servers import LiveServer
from tests.tus import created, patch, upload_id

SIGNING_KEY = "variant-test-key"
ALLOWED = ["image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"]
FORMATS = {"webp": "WEBP", "avif": "AVIF", "jpeg": "JPEG", "png": "PNG"}
RED, BLUE = (230, 20, 20), (20, 20, 230)
SECRET_WORDS = (b"GPSsecret", b"xmp-secret", b"comment-secret", b"Canon", b"http://ns.adobe.com")


@pytest.fixture
def database_url() -> str:
    return ""  # SQLite: variants touch no database beyond the original's row


@pytest.fixture
def server(make_server: ServerFactory) -> LiveServer:
    return make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY)


# --- images made here ------------------------------------------------------------


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"  # Make
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.0)
    gps[27] = b"ASCII\0\0\0GPSsecret"  # GPSProcessingMethod: a string to look for
    return exif


def _halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return image


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf'
    b'-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Label='
    b'"xmp-secret"/></rdf:RDF></x:xmpmeta>'
)


def phone_jpeg(size: tuple[int, int] = (400, 300)) -> bytes:
    """A phone photo as stored: sideways pixels, orientation 6, GPS, XMP, a comment, ICC."""
    out = io.BytesIO()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _halves(size).save(
        out,
        "JPEG",
        quality=90,
        exif=_exif(6).tobytes(),
        xmp=XMP,
        comment=b"comment-secret",
        icc_profile=icc,
    )
    return out.getvalue()


def png_with_text() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "comment-secret")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    out = io.BytesIO()
    image = _halves((300, 200)).convert("RGBA")
    image.save(out, "PNG", pnginfo=info, exif=_exif(1).tobytes())
    return out.getvalue()


def animated(fmt: str) -> bytes:
    """Two frames: red, then blue. A variant shows the first."""
    frames = [Image.new("RGB", (200, 100), RED), Image.new("RGB", (200, 100), BLUE)]
    out = io.BytesIO()
    extra: dict[str, Any] = {"comment": b"comment-secret"} if fmt == "GIF" else {}
    if fmt == "WEBP":
        extra = {"exif": _exif(1).tobytes(), "xmp": XMP}
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **extra)
    return out.getvalue()


# --- helpers -----------------------------------------------------------------------


def upload(client: httpx.Client, data: bytes, name: str, visibility: str = "public") -> str:
    response = client.post(
        "/api/v1/files", params={"filename": name, "visibility": visibility}, content=data
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def signed_url(client: httpx.Client, file_id: str, **params: Any) -> str:
    response = client.post(f"/api/v1/files/{file_id}/signed-url", params=params)
    assert response.status_code == 200, response.text
    return str(response.json()["url"])


def decode(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def assert_no_metadata(response: httpx.Response) -> None:
    body = response.content
    for word in SECRET_WORDS:
        assert word not in body, word
    image = decode(response)
    assert not image.getexif(), dict(image.getexif())
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile", "Comment"):
        assert not image.info.get(key), key
    assert b"ICC_PROFILE" not in body and b"iCCP" not in body and b"ICCP" not in body


def near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 60) -> bool:
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def renders(client: httpx.Client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("filesvc_variant_renders_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def storage_of(server: LiveServer) -> Storage:
    return create_storage(server.settings)


def keys_under(settings: Settings, prefix: str) -> list[str]:
    async def run() -> list[str]:
        storage = create_storage(settings)
        try:
            return [key async for key in storage.iter_keys(prefix)]
        finally:
            await storage.aclose()

    return asyncio.run(run())


def storage_key(server: LiveServer, file_id: str) -> str:
    async def run() -> str:
        engine = create_engine(server.settings)
        try:
            from filesvc import crud

            async with create_session_factory(engine)() as session:
                return (await crud.get_file(session, file_id)).storage_key
        finally:
            await engine.dispose()

    return asyncio.run(run())


# --- presets, formats, orientation, metadata -----------------------------------------


@pytest.mark.parametrize("fmt", ["webp", "avif", "jpeg", "png"])
@pytest.mark.parametrize("preset", ["thumb", "preview"])
def test_every_preset_in_every_format_is_upright_and_clean(
    client: httpx.Client, preset: str, fmt: str
) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    # A format beyond the preset's is ad hoc: it comes signed.
    url = signed_url(client, file_id, variant=preset, format=fmt)
    response = client.get(url)
    image = decode(response)
    assert image.format == FORMATS[fmt]
    assert response.headers["content-type"] == f"image/{fmt}"
    # Stored 400×300 sideways, orientation 6: upright it is 300×400, red on top.
    if preset == "thumb":  # 256×256 cover: cropped to a square
        assert image.size == (256, 256)
    else:  # 1280×1280 inside: never enlarged
        assert image.size == (300, 400)
    rgb = image.convert("RGB")
    assert near(rgb.getpixel((image.width // 2, 5)), RED)
    assert near(rgb.getpixel((image.width // 2, image.height - 5)), BLUE)
    assert_no_metadata(response)
    name = "photo." + ("jpg" if fmt == "jpeg" else fmt)
    assert response.headers["content-disposition"] == f'inline; filename="{name}"'


def test_format_auto_follows_accept_and_varies(client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    url = f"/files/{file_id}/photo.jpg?variant=thumb"
    expected = {
        "image/avif,image/webp,*/*": "image/avif",
        "image/webp,*/*;q=0.8": "image/webp",
        "image/avif;q=0,image/webp": "image/webp",
        "*/*": "image/jpeg",  # the original's format
        "": "image/jpeg",
    }
    for accept, content_type in expected.items():
        response = client.get(url, headers={"Accept": accept})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == content_type, accept
        assert response.headers["vary"] == "Accept"
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert_no_metadata(response)


def test_png_gif_and_webp_originals(client: httpx.Client) -> None:
    png = upload(client, png_with_text(), "pic.png")
    response = client.get(f"/files/{png}?variant=thumb", headers={"Accept": "*/*"})
    assert response.headers["content-type"] == "image/png"  # the original's format
    assert decode(response).size == (200, 200)
    assert_no_metadata(response)
    for fmt, content_type in (("GIF", "image/gif"), ("WEBP", "image/webp")):
        data = animated(fmt)
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
        file_id = upload(client, data, f"anim.{fmt.lower()}")
        response = client.get(f"/files/{file_id}?variant=preview", headers={"Accept": "*/*"})
        image = decode(response)
        # GIF is no output format: PNG; a WebP stays WebP. Either way one still frame, red.
        assert response.headers["content-type"] == (
            "image/png" if content_type == "image/gif" else "image/webp"
        )
        assert getattr(image, "n_frames", 1) == 1
        assert image.size == (200, 100)
        assert near(image.convert("RGB").getpixel((100, 50)), RED)
        assert_no_metadata(response)


def test_fits(client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg((800, 600)), "photo.jpg")  # upright 600×800
    sizes = {"cover": (200, 100), "contain": (200, 100), "inside": (75, 100)}
    for fit, size in sizes.items():
        url = signed_url(client, file_id, w=200, h=100, fit=fit, format="png")
        image = decode(client.get(url))
        assert image.size == size, fit
    url = signed_url(client, file_id, w=200, h=100, fit="contain", format="webp")
    contain = decode(client.get(url))
    corner = contain.convert("RGBA").getpixel((2, 50))
    assert isinstance(corner, tuple) and corner[3] == 0  # padded, transparent
    url = signed_url(client, file_id, w=300, format="webp")  # width only: inside
    assert decode(client.get(url)).size == (300, 400)


# --- HTTP semantics of a stored variant --------------------------------------------


def test_served_with_static_url_semantics(client: httpx.Client) -> None:
    original = phone_jpeg()
    file_id = upload(client, original, "photo.jpg")
    url = f"/files/{file_id}/photo.jpg?variant=thumb"
    accept = {"Accept": "image/webp"}
    first = client.get(url, headers=accept)
    body = first.content
    etag = first.headers["etag"]
    assert etag == f'"{hashlib.sha256(body).hexdigest()}"'
    assert first.headers["content-length"] == str(len(body))
    assert first.headers["accept-ranges"] == "bytes"
    assert first.headers["x-content-type-options"] == "nosniff"
    assert first.headers["content-security-policy"] == "sandbox"
    assert first.headers["repr-digest"].startswith("sha-256=:")
    again = client.get(url, headers=accept)
    assert again.content == body and again.headers["etag"] == etag
    head = client.head(url, headers=accept)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["etag"] == etag and head.headers["content-length"] == str(len(body))
    not_modified = client.get(url, headers={**accept, "If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.headers["vary"] == "Accept" and not_modified.headers["etag"] == etag
    failed = client.get(url, headers={**accept, "If-Match": '"nope"'})
    assert failed.status_code == 412
    part = client.get(url, headers={**accept, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == body[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(body)}"
    parts = client.get(url, headers={**accept, "Range": "bytes=0-1,5-6"})
    assert parts.status_code == 206
    assert parts.headers["content-type"].startswith("multipart/byteranges")
    assert body[0:2] in parts.content and body[5:7] in parts.content
    unsatisfiable = client.get(url, headers={**accept, "Range": f"bytes={len(body)}-"})
    assert unsatisfiable.status_code == 416
    # The original is untouched, byte for byte.
    assert client.get(f"/files/{file_id}").content == original


def test_stored_once_beside_the_original(server: LiveServer, client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    key = storage_key(server, file_id)
    before = renders(client)
    for _ in range(3):
        client.get(f"/files/{file_id}?variant=thumb", headers={"Accept": "image/webp"})
    assert renders(client) == before + 1
    [stored] = keys_under(server.settings, variants_prefix(key))
    assert stored.startswith(f"variants/{key}/")


def test_ten_concurrent_first_requests_render_once(
    server: LiveServer, client: httpx.Client
) -> None:
    file_id = upload(client, phone_jpeg((2000, 1500)), "photo.jpg")
    before = renders(client)
    url = f"{server.url}/files/{file_id}?variant=preview"

    async def fetch_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(
                *(http.get(url, headers={"Accept": "image/avif"}) for _ in range(10))
            )

    responses = asyncio.run(fetch_all())
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert len({r.headers["etag"] for r in responses}) == 1
    assert renders(client) == before + 1


# --- who may ask for what ------------------------------------------------------------


def test_ad_hoc_sizes_need_a_signature_that_covers_them(client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    plain = client.get(f"/files/{file_id}?w=100&h=50")
    assert plain.status_code == 403
    assert plain.json()["error"]["code"] == "signature_required"
    preset_format = client.get(f"/files/{file_id}?variant=thumb&format=png")
    assert preset_format.status_code == 403

    url = signed_url(client, file_id, w=100, h=50, fit="cover", format="webp", q=50)
    good = client.get(url)
    assert decode(good).size == (100, 50)
    assert good.headers["cache-control"] == "private, no-store"
    assert "vary" not in good.headers  # the format was chosen: Accept changes nothing

    tampered = client.get(url.replace("w=100", "w=101"))
    assert tampered.status_code == 403
    assert tampered.json()["error"]["code"] == "invalid_signature"
    added = client.get(url + "&variant=preview")
    assert added.status_code == 403
    # A signature of the file alone covers its presets, never ad-hoc sizes.
    expires = int(time.time()) + 60
    token = signature(SIGNING_KEY.encode(), file_id, expires)
    file_only = f"expires={expires}&signature={token}"
    assert client.get(f"/files/{file_id}?variant=thumb&{file_only}").status_code == 200
    assert client.get(f"/files/{file_id}?w=100&{file_only}").status_code == 403

    past = int(time.time()) - 10
    variant = "w=100&h=50"
    old = signature(SIGNING_KEY.encode(), file_id, past, variant)
    expired = client.get(f"/files/{file_id}?{variant}&expires={past}&signature={old}")
    assert expired.status_code == 403
    assert "expired" in expired.json()["error"]["message"]


def test_private_originals_keep_their_variants_private(client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg", visibility="private")
    refused = client.get(f"/files/{file_id}?variant=thumb")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "signature_required"
    for url in (signed_url(client, file_id, variant="thumb"), signed_url(client, file_id)):
        if "variant" not in url:
            url += "&variant=thumb"  # the file's own signature covers its presets
        response = client.get(url)
        assert decode(response).size == (256, 256)
        assert response.headers["cache-control"] == "private, no-store"


def test_refusals_are_json_errors(client: httpx.Client) -> None:
    photo = upload(client, phone_jpeg(), "photo.jpg")
    pdf = upload(client, b"%PDF-1.7\n" + b"x" * 100, "doc.pdf")
    cases = {
        f"/files/{photo}?variant=huge": (404, "variant_not_found"),
        f"/files/{pdf}?variant=thumb": (404, "variant_not_available"),
        f"/files/{photo}?variant=": (400, "invalid_request"),
        f"/files/{photo}?variant=thumb&w=0": (400, "invalid_request"),
        f"/files/{photo}?variant=thumb&w=99999": (400, "invalid_request"),
        f"/files/{photo}?variant=thumb&fit=zoom": (400, "invalid_request"),
        f"/files/{photo}?variant=thumb&format=gif": (400, "invalid_request"),
        f"/files/{photo}?variant=thumb&q=101": (400, "invalid_request"),
        f"/files/{photo}?h=10&fit=cover": (400, "invalid_request"),
        "/files/nosuchfile?variant=thumb": (404, "file_not_found"),
    }
    for url, (status, code) in cases.items():
        response = client.get(url)
        assert response.status_code == status, (url, response.text)
        assert response.json()["error"]["code"] == code, url
        head = client.head(url)
        assert head.status_code == status, url
    response = client.post(f"/api/v1/files/{photo}/signed-url", params={"variant": "huge"})
    assert response.status_code == 404
    response = client.post(f"/api/v1/files/{photo}/signed-url", params={"w": "-1"})
    assert response.status_code == 400


def test_over_the_decode_budget_is_503(make_server: ServerFactory) -> None:
    import threading

    server = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY, image_decode_wait=0.2)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        file_id = upload(client, phone_jpeg(), "photo.jpg")
        budget = server.app.state.resources.decode_budget
        held, release = threading.Event(), threading.Event()

        def hold_everything() -> None:  # another decode holding the whole budget
            with budget.reserve(budget.limit_bytes):
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_everything)
        holder.start()
        try:
            assert held.wait(10)
            response = client.get(f"/files/{file_id}?variant=thumb")
        finally:
            release.set()
            holder.join()
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "decode_budget_exhausted"
        assert client.get(f"/files/{file_id}?variant=thumb").status_code == 200


# --- deleted with the original; known to `filesvc check` ------------------------------


def test_deleted_with_the_original(server: LiveServer, client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    key = storage_key(server, file_id)
    for variant in ("thumb", "preview"):
        assert client.get(f"/files/{file_id}?variant={variant}").status_code == 200
    assert len(keys_under(server.settings, variants_prefix(key))) == 2
    assert client.delete(f"/api/v1/files/{file_id}").status_code == 204
    assert keys_under(server.settings, variants_prefix(key)) == []
    assert client.get(f"/files/{file_id}?variant=thumb").status_code == 404


def test_check_knows_variants(server: LiveServer, client: httpx.Client) -> None:
    file_id = upload(client, phone_jpeg(), "photo.jpg")
    assert client.get(f"/files/{file_id}?variant=thumb").status_code == 200
    ghost = "variants/aa/bbbb/ghostfile/" + "0" * 32

    async def run() -> tuple[list[str], list[str], list[str]]:
        storage = create_storage(server.settings)
        engine = create_engine(server.settings)
        try:
            async with open_writer(storage, ghost) as writer:
                await writer.write(b"x" * HEADER_SIZE)
                await writer.commit()
            sessions = create_session_factory(engine)
            report = await check(sessions, storage, grace_seconds=0, fix=True)
            after = await check(sessions, storage, grace_seconds=0)
            return report.bytes_without_row, after.bytes_without_row, report.rows_without_bytes
        finally:
            await storage.aclose()
            await engine.dispose()

    orphans, after, rows = asyncio.run(run())
    assert orphans == [ghost]  # the live variant is not damage; the ghost's is an orphan
    assert after == [] and rows == []
    assert client.get(f"/files/{file_id}?variant=thumb").status_code == 200


# --- FILESVC_STRIP_METADATA at upload ---------------------------------------------------


def test_strip_metadata_at_upload(make_server: ServerFactory) -> None:
    import base64

    server = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY, strip_metadata=True)
    original = phone_jpeg()
    digest = base64.b64encode(hashlib.sha256(original).digest()).decode()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        # The client's digest is of what it sent; the record is of what is stored.
        response = client.post(
            "/api/v1/files",
            params={"filename": "photo.jpg"},
            content=original,
            headers={"Repr-Digest": f"sha-256=:{digest}:"},
        )
        assert response.status_code == 201, response.text
        record = response.json()
        stored = client.get(f"/files/{record['id']}").content
        assert stored != original
        assert record["sha256"] == hashlib.sha256(stored).hexdigest()
        assert record["size"] == len(stored)
        assert (record["width"], record["height"]) == (400, 300)
        for word in (b"GPSsecret", b"xmp-secret", b"comment-secret", b"Canon"):
            assert word not in stored
        image = Image.open(io.BytesIO(stored))
        assert dict(image.getexif()) == {0x0112: 6}  # still shown upright
        assert image.info.get("icc_profile")  # colours unchanged
        thumb = decode(client.get(f"/files/{record['id']}?variant=thumb"))
        assert near(thumb.convert("RGB").getpixel((128, 5)), RED)
        wrong = client.post(
            "/api/v1/files",
            params={"filename": "photo.jpg"},
            content=original,
            headers={"Repr-Digest": f"sha-256=:{base64.b64encode(bytes(32)).decode()}:"},
        )
        assert wrong.status_code == 422
        multipart = client.post("/api/v1/files", files={"file": ("a.png", png_with_text())})
        assert multipart.status_code == 201, multipart.text
        body = client.get(f"/files/{multipart.json()['id']}").content
        assert b"comment-secret" not in body and b"xmp-secret" not in body
        assert multipart.json()["size"] == len(body)
        pdf = b"%PDF-1.7\n% comment-secret\n" + b"x" * 100
        kept = client.post("/api/v1/files", params={"filename": "d.pdf"}, content=pdf)
        assert client.get(f"/files/{kept.json()['id']}").content == pdf  # not an image: as sent


def test_strip_metadata_on_resumable_uploads(make_server: ServerFactory) -> None:
    """A tus upload is stripped like a one-shot one, after its last byte; nothing else stays."""
    server = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY, strip_metadata=True)
    original = phone_jpeg()
    half = len(original) // 2
    with httpx.Client(base_url=server.url, timeout=60) as client:
        url = created(client, len(original), filename="photo.jpg", sha256=sha256_hex(original))
        assert patch(client, url, 0, original[:half]).status_code == 204
        assert patch(client, url, half, original[half:]).status_code == 204
        record = client.get(f"/api/v1/files/{upload_id(url)}").json()
        stored = client.get(f"/files/{record['id']}").content
    for word in (b"GPSsecret", b"xmp-secret", b"comment-secret", b"Canon"):
        assert word not in stored
    assert dict(Image.open(io.BytesIO(stored)).getexif()) == {0x0112: 6}
    assert record["sha256"] == sha256_hex(stored) and record["size"] == len(stored)
    assert (record["width"], record["height"]) == (400, 300)
    assert len(server.stored_objects()) == 1  # the assembled bytes are gone


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_tiff_and_bmp_originals_give_png(make_server: ServerFactory) -> None:
    server = make_server(
        allowed_types=[*ALLOWED, "image/tiff", "image/bmp"], signing_key=SIGNING_KEY
    )
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for fmt in ("TIFF", "BMP"):
            out = io.BytesIO()
            _halves((300, 200)).save(out, fmt)
            file_id = upload(client, out.getvalue(), f"pic.{fmt.lower()}")
            response = client.get(f"/files/{file_id}?variant=thumb")
            assert response.headers["content-type"] == "image/png"
            image = decode(response)
            assert image.size == (200, 200)
            assert near(image.convert("RGB").getpixel((5, 100)), RED)


def test_two_services_rendering_at_once_store_one_whole_variant(
    make_server: ServerFactory,
) -> None:
    """Two apps on one storage (as two processes would be): each renders, neither tears."""
    first = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY)
    second = make_server(allowed_types=ALLOWED, signing_key=SIGNING_KEY)
    with httpx.Client(base_url=first.url, timeout=60) as client:
        file_id = upload(client, phone_jpeg((2000, 1500)), "photo.jpg")
    key = storage_key(first, file_id)

    async def fetch_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            return await asyncio.gather(
                *(
                    http.get(f"{server.url}/files/{file_id}?variant=preview")
                    for server in (first, second) * 5
                )
            )

    responses = asyncio.run(fetch_all())
    assert {r.status_code for r in responses} == {200}
    etags = {r.headers["etag"] for r in responses}
    for response in responses:
        assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
        assert decode(response).size == (960, 1280)
    [stored] = keys_under(first.settings, variants_prefix(key))

    async def read() -> bytes:
        storage = create_storage(first.settings)
        try:
            return b"".join([chunk async for chunk in await storage.open_reader(stored)])
        finally:
            await storage.aclose()

    whole = asyncio.run(read())
    body = whole[HEADER_SIZE:]
    assert f'"{hashlib.sha256(body).hexdigest()}"' in etags
    assert whole[:HEADER_SIZE].split()[1].decode() == hashlib.sha256(body).hexdigest()
