"""Exports over HTTP: the dataset listing and the streamed CSV and Parquet downloads.

``HEAD`` on each answers the headers its ``GET`` would, after the same checks
(404, 400), without running the query or taking an export slot.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from filesvc.auth import require
from filesvc.deps import ResourcesDep
from filesvc.errors import ClientClosedRequest
from filesvc.exports import Exporter, ExportStream, parse_query_string
from filesvc.exports.query import MAX_FILTERS, OPERATORS
from filesvc.exports.stream import AnyExport
from filesvc.logs import note_incomplete
from filesvc.metrics import Metrics
from filesvc.schemas import error_responses
from filesvc.serving import cancel_on_disconnect

logger = logging.getLogger("filesvc.exports")

router = APIRouter(prefix="/exports", tags=["exports"], dependencies=[require("exports:read")])


class ColumnOut(BaseModel):
    name: str
    type: str = Field(
        description="integer, float, decimal, boolean, date, datetime, time, text, uuid, "
        "binary, json, … (filters and order_by take the first nine)."
    )


class DatasetOut(BaseModel):
    name: str = Field(description="Download it from `/api/v1/exports/{name}.csv`.")
    description: str
    columns: list[ColumnOut]


class DatasetList(BaseModel):
    datasets: list[DatasetOut]


def get_exporter(resources: ResourcesDep) -> Exporter:
    """The process's exporter, built in the lifespan (its catalog reflects on first use)."""
    return resources.exporter


ExporterDep = Annotated[Exporter, Depends(get_exporter)]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (RFC 9110 §12.5.3)."""
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in {"gzip", "x-gzip"}:
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def attachment_name(dataset: str, moment: datetime, suffix: str = "csv") -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", dataset)
    return f"{safe}-{moment.astimezone(UTC):%Y%m%dT%H%M%SZ}.{suffix}"


CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def export_headers(dataset: str, suffix: str, *, gzip: bool) -> dict[str, str]:
    """The headers of an export's answer (its GET and its HEAD)."""
    name = attachment_name(dataset, datetime.now(UTC), suffix)
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if suffix == "csv":
        headers["Vary"] = "Accept-Encoding"
    if gzip:
        headers["Content-Encoding"] = "gzip"
    return headers


def head_response(headers: dict[str, str], media_type: str) -> Response:
    """The answer to HEAD: the headers of the streamed GET, no body and no length."""
    response = Response(status_code=200, headers=headers, media_type=media_type)
    del response.headers["content-length"]  # the GET is chunked: its length is unknown
    return response


class CSVStreamResponse(StreamingResponse):
    """Streams an export; stops it when the client leaves; aborts the connection on failure.

    A failure after the response has started propagates out of the app, so the
    server closes the connection without the final empty chunk: the client
    sees an incomplete body, never a short file that looks whole.
    """

    def __init__(
        self,
        export: AnyExport,
        *,
        gzip: bool = False,
        metrics: Metrics | None = None,
        parquet: bool = False,
    ) -> None:
        self.export = export
        self.metrics = metrics
        if parquet:
            assert isinstance(export, ExportStream)  # Parquet takes the row path
            headers = export_headers(export.dataset.name, "parquet", gzip=False)
            self.chunks = export.parquet_chunks()
            media_type = PARQUET_MEDIA_TYPE
        else:
            headers = export_headers(export.dataset.name, "csv", gzip=gzip)
            self.chunks = export.chunks(gzip=gzip)
            media_type = CSV_MEDIA_TYPE
        super().__init__(self.chunks, headers=headers, media_type=media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.CancelScope() as streaming:
                watcher = asyncio.create_task(cancel_on_disconnect(receive, streaming))
                try:
                    await self._send_all(send)
                finally:
                    watcher.cancel()
            if streaming.cancelled_caught:
                # The access line says so too (incomplete, the 499's code): its status
                # is the 200 that was sent.
                note_incomplete(ClientClosedRequest.code)
                logger.info(
                    "export of %s stopped after %d rows: the client went away",
                    self.export.dataset.name,
                    self.export.rows,
                )
        finally:
            await self.export.aclose()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        counted = 0
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self.metrics is not None:  # rows and bytes as they leave, not at the end
                    rows, counted = self.export.rows - counted, self.export.rows
                    self.metrics.count_export(self.export.dataset.name, rows, len(chunk))
        finally:
            await self.chunks.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


_CSV_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }
    for name, description, schema in (
        (
            "columns",
            "Columns to export, in this order, e.g. `id,filename,size` (default: all).",
            {"type": "string"},
        ),
        (
            "order_by",
            "Column to sort by, `-` in front for descending; several comma-separated. "
            "Ties are broken by the primary key (by every column when there is none). "
            "Default: the primary key; a view without one comes in database order.",
            {"type": "string"},
        ),
        ("limit", "Most rows to export.", {"type": "integer", "minimum": 0}),
        ("bom", "Start with a UTF-8 byte order mark (for Excel).", {"type": "boolean"}),
        (
            "delimiter",
            "Field delimiter.",
            {"type": "string", "enum": ["comma", "semicolon", "tab"], "default": "comma"},
        ),
        ("header", "Write the header row.", {"type": "boolean", "default": True}),
        (
            "formula_escape",
            "Prefix `'` to text cells that begin with = + - @ tab or CR (OWASP).",
            {"type": "boolean", "default": True},
        ),
    )
]

_CSV_DESCRIPTION = f"""The dataset as CSV (RFC 4180, CRLF, UTF-8, header row), streamed from a
database cursor. NULL is an empty field, the empty string `""`.

Filters, at most {MAX_FILTERS}, AND-ed: `col=v` (or `col__eq=v`), `col__ne=`, `col__gt=`,
`col__gte=`, `col__lt=`, `col__lte=`, `col__in=a,b,c`, `col__isnull=true|false`
(operators: {", ".join(OPERATORS)}). Values are parsed by the column's type: integers,
numbers, `true`/`false`, ISO 8601 dates and times (with a zone for zoned columns).

Every name and value is checked before the first byte: an unknown dataset is 404, an
unknown column, option or bad value 400. A failure after the first byte ends the
connection without the final chunk. `Accept-Encoding: gzip` gets a gzip-coded stream."""


@router.head("", include_in_schema=False)
@router.get(
    "",
    response_model=DatasetList,
    summary="List the export datasets",
    responses=error_responses(503),
)
async def list_datasets(resources: ResourcesDep, exporter: ExporterDep) -> DatasetList:
    datasets = await exporter.catalog.datasets(resources.engine)
    return DatasetList(
        datasets=[
            DatasetOut(
                name=d.name,
                description=d.description,
                columns=[ColumnOut(name=c.name, type=c.kind) for c in d.columns],
            )
            for d in datasets.values()
        ]
    )


_PARQUET_DESCRIPTION = """The same rows as an Apache Parquet file, streamed a row group at a time:
the same `columns`, `order_by`, `limit` and filters as the CSV; typed columns from the
declared schema (integers, floats, decimals, text, booleans, timestamps in UTC, dates,
JSON as text). No formula escaping: Parquet is typed."""


@router.head("/{name}.csv", include_in_schema=False)
@router.get(
    "/{name}.csv",
    summary="Export a dataset as CSV",
    description=_CSV_DESCRIPTION,
    response_class=CSVStreamResponse,
    status_code=200,
    responses={
        200: {
            "description": "The CSV, streamed (chunked).",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 404, 503),
    },
    openapi_extra={"parameters": _CSV_PARAMETERS},
)
async def export_csv(
    name: str, request: Request, resources: ResourcesDep, exporter: ExporterDep
) -> Response:
    return await _export(name, request, resources, exporter, parquet=False)


@router.head("/{name}.parquet", include_in_schema=False)
@router.get(
    "/{name}.parquet",
    summary="Export a dataset as Parquet",
    description=_PARQUET_DESCRIPTION,
    response_class=CSVStreamResponse,
    status_code=200,
    responses={
        200: {
            "description": "The Parquet file, streamed (chunked), a row group at a time.",
            "content": {PARQUET_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(400, 404, 503),
    },
    openapi_extra={"parameters": _CSV_PARAMETERS[:3]},
)
async def export_parquet(
    name: str, request: Request, resources: ResourcesDep, exporter: ExporterDep
) -> Response:
    return await _export(name, request, resources, exporter, parquet=True)


async def _export(
    name: str, request: Request, resources: ResourcesDep, exporter: Exporter, *, parquet: bool
) -> Response:
    params = parse_query_string(request.scope.get("query_string", b"").decode("latin-1"))
    gzip = not parquet and accepts_gzip(request.headers.get("accept-encoding", ""))
    if request.method == "HEAD":
        query = await exporter.plan(resources.engine, name, params)
        suffix, media_type = ("parquet", PARQUET_MEDIA_TYPE) if parquet else ("csv", CSV_MEDIA_TYPE)
        return head_response(export_headers(query.dataset.name, suffix, gzip=gzip), media_type)
    export = await exporter.open(resources.engine, name, params, parquet=parquet)
    try:
        return CSVStreamResponse(export, gzip=gzip, metrics=resources.metrics, parquet=parquet)
    except BaseException:
        await export.aclose()
        raise
