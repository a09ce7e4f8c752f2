"""CSV exports: datasets, their query language, and rows streamed out as CSV.

- :mod:`~filesvc.exports.datasets` — what may be exported (``files`` and the
  configured tables, reflected once per process);
- :mod:`~filesvc.exports.query` — query parameters → a checked, bound ``select()``;
- :mod:`~filesvc.exports.csvformat` — rows → RFC 4180 text, a batch at a time;
- :mod:`~filesvc.exports.stream` — a running export: connection, cursor, chunks.

The HTTP route (``filesvc/routes/exports.py``) and ``filesvc export`` both
go through :class:`Exporter`.
"""

from __future__ import annotations

from filesvc.exports.csvformat import CSVFormat
from filesvc.exports.datasets import Catalog, Dataset, DatasetColumn
from filesvc.exports.query import ExportQuery, parse_query, parse_query_string
from filesvc.exports.stream import Exporter, ExportStream

__all__ = [
    "CSVFormat",
    "Catalog",
    "Dataset",
    "DatasetColumn",
    "ExportQuery",
    "ExportStream",
    "Exporter",
    "parse_query",
    "parse_query_string",
]
