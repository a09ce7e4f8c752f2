"""The upload pipeline's own parsing: integrity headers and the multipart form parser."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from filesvc import crud
from filesvc.config import Settings
from filesvc.db import create_engine, create_session_factory, migrate
from filesvc.decoding import DecodeBudget
from filesvc.errors import InvalidRequest
from filesvc.formparser import Field, FileData, FileEnd, FileStart, FormParser
from filesvc.pipeline import UploadPipeline, parse_repr_digest
from filesvc.storage import create_storage
from tests.images import make_image
from tests.servers import LiveServer

DIGEST = hashlib.sha256(b"hello").digest()
B64 = base64.b64encode(DIGEST).decode()


@pytest.mark.parametrize(
    "header",
    [
        f"sha-256=:{B64}:",
        f"  sha-256=:{B64}:  ",
        f"sha-512=:{base64.b64encode(bytes(64)).decode()}:, sha-256=:{B64}:",
        f"sha-256=:{B64}:;note=1",
    ],
)
def test_a_well_formed_repr_digest_gives_the_sha256(header: str) -> None:
    assert parse_repr_digest(header) == DIGEST.hex()


def test_other_algorithms_alone_state_nothing() -> None:
    assert parse_repr_digest(None) is None
    assert parse_repr_digest("sha-512=:AAAA:") is None


@pytest.mark.parametrize(
    "header",
    [
        f"sha-256=:{B64.replace('+', '-').replace('/', '_')}x-_:",  # base64url alphabet
        f'sha-256="{B64}"',  # a string, not a byte sequence
        f"sha-256={B64}",  # neither
        f"sha-256=:{B64}",  # unterminated
        "sha-256=:AAAA:",  # 3 bytes
        "sha-256",  # a bare key is boolean true
        f"SHA-256=:{B64}:",  # keys are lowercase
        f"sha-256=:{B64}:,",  # trailing comma
        "garbage that is not a dictionary",
        ",".join(["md5=:AAAA:"] * 17),  # too many members
    ],
)
def test_a_malformed_repr_digest_is_refused_not_ignored(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_repr_digest(header)


BOUNDARY = "b0undary"


def _parser(**limits: int) -> FormParser:
    values = {"max_fields": 4, "max_field_bytes": 64, "max_part_header_bytes": 512, **limits}
    return FormParser(f"multipart/form-data; boundary={BOUNDARY}", **values)


def _body(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _events(parser: FormParser, body: bytes, step: int) -> list[object]:
    events: list[object] = []
    for start in range(0, len(body), step):
        for event in parser.feed(body[start : start + step]):
            # FileData views are only valid until the next feed: keep their bytes.
            events.append(bytes(event.data) if isinstance(event, FileData) else event)
    parser.close()
    return events


@pytest.mark.parametrize("step", [1, 7, 4096])
def test_the_form_parser_emits_typed_events_in_order(step: int) -> None:
    body = _body(("visibility", None, b"private"), ("file", "a.png", b"PNG" * 10))
    events = _events(_parser(), body, step)
    assert events[0] == Field(name="visibility", value="private")
    assert events[1] == FileStart(name="file", filename="a.png")
    assert b"".join(e for e in events[2:-1] if isinstance(e, bytes)) == b"PNG" * 10
    assert events[-1] == FileEnd()


def test_the_form_parser_applies_the_form_limits() -> None:
    with pytest.raises(InvalidRequest, match="longer than 64 bytes"):
        _events(_parser(), _body(("note", None, b"x" * 65)), 4096)
    with pytest.raises(InvalidRequest, match="More than 4 form fields"):
        _events(_parser(), _body(*[("f", None, b"1")] * 5), 4096)
    with pytest.raises(InvalidRequest, match="headers are too large"):
        _events(_parser(), _body(("f" * 600, None, b"1")), 4096)
    with pytest.raises(InvalidRequest, match="before its final boundary"):
        _events(_parser(), _body(("f", None, b"1"))[:-10], 4096)
    with pytest.raises(InvalidRequest, match="boundary"):
        FormParser("multipart/form-data", max_fields=1, max_field_bytes=1, max_part_header_bytes=1)


def test_a_malformed_repr_digest_is_400_and_nothing_is_kept(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(
            "/api/v1/files?filename=a.png",
            content=make_image(),
            headers={"Repr-Digest": f'sha-256="{B64}"'},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert "Repr-Digest" in response.json()["error"]["message"]
    assert server.row_count() == 0 and server.stored_objects() == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_commit_cancelled_in_flight_keeps_the_bytes_of_a_row_that_landed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(settings)
    storage = create_storage(settings)
    try:
        await migrate(engine)
        sessions = create_session_factory(engine)
        budget = DecodeBudget(settings.image_decode_budget_bytes, settings.image_decode_wait)
        pipeline = UploadPipeline(settings, storage, sessions, budget)
        async with pipeline.receiver(filename="a.png") as receiver:
            await receiver.feed(make_image())
            row = await receiver.finish()
        real_commit = AsyncSession.commit

        async def commit_then_cancelled(self: AsyncSession) -> None:
            await real_commit(self)  # the row lands; then the answer is lost to a cancel
            raise asyncio.CancelledError()

        monkeypatch.setattr(AsyncSession, "commit", commit_then_cancelled)
        with pytest.raises(asyncio.CancelledError):
            await pipeline.record([row], "public")
        monkeypatch.undo()
        async with sessions() as session:
            assert await crud.existing_ids(session, [row.id]) == {row.id}
        assert (await storage.stat(row.storage_key)).size == row.size  # not discarded
    finally:
        await storage.aclose()
        await engine.dispose()
