"""Reading exports over HTTP, for the tests of exports and of their query language."""

from __future__ import annotations

from typing import Any

import httpx


def export(client: httpx.Client, name: str = "mixed", **params: Any) -> str:
    response = client.get(f"/api/v1/exports/{name}.csv", params=params)
    assert response.status_code == 200, response.text
    return response.content.decode("utf-8")


def ids(client: httpx.Client, **params: Any) -> list[int]:
    text = export(client, columns="id", **params)
    assert text.startswith("id\r\n")
    return [int(line) for line in text.split("\r\n")[1:-1]]


def refused(
    client: httpx.Client, status: int, path: str = "/api/v1/exports/mixed.csv", **params: Any
) -> dict[str, Any]:
    """The JSON error of a refused export request."""
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()["error"]
    return body
