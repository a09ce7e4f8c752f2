"""moto's S3 server over real HTTP: one per test session, a fresh bucket per test.

Loaded as a pytest plugin by ``conftest.py``. moto keeps its state in this
process, shared by every server it runs: a second server (for a test that
stops its endpoint) sees the same buckets, and a restarted one keeps them.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
#: Dummy credentials: moto accepts any, and none of the developer's own may leak in.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "filesvc-test",
    "AWS_SECRET_ACCESS_KEY": "filesvc-test-secret",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/nonexistent/filesvc-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/filesvc-test-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


def use_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point boto3's standard chain at dummy credentials, for this test only."""
    for name in _UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@functools.cache
def s3_client(endpoint_url: str) -> S3Client:
    """A client for the tests' own looks at the bucket (not the service's); shared, thread-safe."""
    return boto3.session.Session(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 0},
            connect_timeout=2,
            read_timeout=10,
        ),
    )


class S3CallLog:
    """The S3 operations a storage's client makes, from botocore's own events.

    ``S3CallLog(server.app.state.resources.storage)`` watches a live server's.
    """

    def __init__(self, storage: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.attempts: list[str] = []
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self._lock = threading.Lock()
        for client in {storage.client, storage.complete_client}:
            events = client.meta.events
            events.register("provide-client-params.s3", self._params)
            events.register("before-call.s3", self._before)
            events.register("after-call.s3", self._after)
            events.register("after-call-error.s3", self._after)
            events.register("before-send.s3", self._send)

    def _params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        with self._lock:
            self.calls.append((model.name, dict(params)))

    def _before(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.active[model.name] = self.active.get(model.name, 0) + 1
            self.peak[model.name] = max(self.peak.get(model.name, 0), self.active[model.name])

    def _after(self, event_name: str, **_: Any) -> None:
        # after-call-error (a connection that failed) carries no model: the name it does.
        name = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.active[name] -= 1

    def _send(self, event_name: str, **_: Any) -> None:
        with self._lock:
            self.attempts.append(event_name.rsplit(".", 1)[-1])

    @property
    def operations(self) -> list[str]:
        return [name for name, _ in self.calls]


class MotoS3:
    """A ``ThreadedMotoServer`` on 127.0.0.1 that can be stopped and restarted on its port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    def start(self) -> MotoS3:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def list_incomplete_uploads(client: S3Client, bucket: str, prefix: str = "") -> list[str]:
    """``ListMultipartUploads``: the keys of the uploads in progress."""
    response = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [upload.get("Key", "") for upload in response.get("Uploads", [])]


def list_keys(client: S3Client, bucket: str, prefix: str = "") -> list[str]:
    response = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in response.get("Contents", [])]


@dataclass
class S3Bucket:
    """A fresh bucket on moto's server, and how the service's settings reach it."""

    name: str
    endpoint_url: str
    client: S3Client

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """``Settings`` values pointing the service at this bucket."""
        values: dict[str, Any] = {
            "storage": "s3",
            "s3_bucket": self.name,
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": REGION,
            "s3_addressing_style": "path",
            "s3_timeout": 5.0,
        }
        values.update(overrides)
        return values

    def keys(self, prefix: str = "") -> list[str]:
        return list_keys(self.client, self.name, prefix)

    def incomplete_uploads(self, prefix: str = "") -> list[str]:
        return list_incomplete_uploads(self.client, self.name, prefix)

    def empty(self) -> None:
        for upload in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=self.name, Key=upload.get("Key", ""), UploadId=upload.get("UploadId", "")
            )
        for key in self.keys():
            self.client.delete_object(Bucket=self.name, Key=key)


def create_bucket(endpoint_url: str) -> S3Bucket:
    client = s3_client(endpoint_url)
    name = f"filesvc-test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=name)
    return S3Bucket(name=name, endpoint_url=endpoint_url, client=client)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoS3]:
    """moto's S3 server on a free port of 127.0.0.1, for the whole session."""
    # Each request would otherwise be logged at INFO into every captured log.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = MotoS3().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh, empty bucket; dummy credentials in the environment while the test runs."""
    use_test_credentials(monkeypatch)
    bucket = create_bucket(moto_server.endpoint_url)
    yield bucket
    # moto holds objects in this process's memory: give it back.
    deadline = time.monotonic() + 5
    while True:
        try:
            bucket.empty()
            bucket.client.delete_bucket(Bucket=bucket.name)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
