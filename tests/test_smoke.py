from __future__ import annotations

import httpx

from tests.images import make_image


def test_upload_and_list(client: httpx.Client) -> None:
    data = make_image("image/png")
    response = client.post("/api/v1/files", files={"file": ("a.png", data, "image/png")})
    assert response.status_code == 201, response.text
    assert client.get("/api/v1/files").json()["items"][0]["id"] == response.json()["id"]
