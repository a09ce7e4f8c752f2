"""`filesvc check`: rows without bytes and bytes without rows, found and repaired."""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import pytest

from tests.images import make_image
from tests.processes import FILESVC
from tests.servers import LiveServer


def run_check(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`filesvc check` configured like the server (the test's AWS credentials inherited)."""
    settings = server.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESVC_")}
    env["FILESVC_DATA_DIR"] = str(settings.data_dir)
    env["FILESVC_DATABASE_URL"] = settings.database_url
    env["FILESVC_STORAGE"] = settings.storage
    if settings.storage == "s3":
        env["FILESVC_S3_BUCKET"] = settings.s3_bucket
        env["FILESVC_S3_PREFIX"] = settings.s3_prefix
        env["FILESVC_S3_ENDPOINT_URL"] = settings.s3_endpoint_url or ""
        env["FILESVC_S3_REGION"] = settings.s3_region or "us-east-1"
    return subprocess.run(
        [FILESVC, "check", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_check_reports_and_fixes_damage(server: LiveServer, client: httpx.Client) -> None:
    if server.settings.storage != "local":
        pytest.skip("S3 objects cannot be back-dated; see the S3 variant below")
    ids = [
        client.post("/api/v1/files", files={"file": (f"{i}.png", make_image())}).json()["id"]
        for i in range(3)
    ]
    clean = run_check(server)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked 3 rows and 3 stored objects" in clean.stdout

    # Damage: one file's bytes vanish; one old and one fresh unrecorded object appear.
    [(lost_key,)] = server.query("SELECT storage_key FROM files WHERE id = :id", id=ids[0])
    (server.data_dir / "files" / lost_key).unlink()
    old = server.data_dir / "files" / "aa" / "bb" / "orphanold"
    young = server.data_dir / "files" / "aa" / "bb" / "orphanyoung"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old")
    young.write_bytes(b"young")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    found = run_check(server, "--grace", "600")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"row without bytes: {ids[0]}" in found.stdout
    assert "bytes without row: aa/bb/orphanold" in found.stdout
    assert "orphanyoung" not in found.stdout
    assert "1 younger left alone" in found.stdout

    fixed = run_check(server, "--grace", "600", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "fixed 2" in fixed.stdout
    assert not old.exists() and young.exists()
    assert server.row_count() == 2
    assert client.get(f"/api/v1/files/{ids[0]}").status_code == 404
    assert run_check(server, "--grace", "600").returncode == 0


def test_check_with_an_unreachable_database_exits_1(server: LiveServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESVC_")}
    env["FILESVC_DATA_DIR"] = str(server.settings.data_dir)
    env["FILESVC_DATABASE_URL"] = "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    result = subprocess.run([FILESVC, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "database unreachable" in result.stderr


def test_check_on_s3(server: LiveServer, client: httpx.Client) -> None:
    if server.settings.storage != "s3":
        pytest.skip("the local variant back-dates files to test the grace period")
    from tests.s3server import s3_client

    ids = [
        client.post("/api/v1/files", files={"file": (f"{i}.png", make_image())}).json()["id"]
        for i in range(2)
    ]
    s3 = s3_client(server.settings.s3_endpoint_url or "")
    prefix = server.settings.s3_prefix.strip("/") + "/" if server.settings.s3_prefix else ""
    [(lost_key,)] = server.query("SELECT storage_key FROM files WHERE id = :id", id=ids[0])
    s3.delete_object(Bucket=server.settings.s3_bucket, Key=prefix + lost_key)
    s3.put_object(Bucket=server.settings.s3_bucket, Key=prefix + "zz/zz/orphan", Body=b"x")

    young = run_check(server)
    assert young.returncode == 1 and "1 younger left alone" in young.stdout, young.stdout
    found = run_check(server, "--grace", "0")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"row without bytes: {ids[0]}" in found.stdout
    assert "bytes without row: zz/zz/orphan" in found.stdout
    assert run_check(server, "--grace", "0", "--fix").returncode == 0
    assert run_check(server, "--grace", "0").returncode == 0
    assert server.stored_objects() == [
        server.query("SELECT storage_key FROM files WHERE id = :id", id=ids[1])[0][0]
    ]


def test_check_finds_and_aborts_unfinished_uploads_left_by_a_crash(
    server: LiveServer, client: httpx.Client
) -> None:
    """What a crashed process leaves mid-upload: an S3 multipart upload with parts,
    or a local temp file. `check` lists it once older than the grace; `--fix`
    aborts it; within the grace it is left alone (it may be an upload in progress)."""
    settings = server.settings
    if settings.storage == "s3":
        from tests.s3server import s3_client

        s3 = s3_client(settings.s3_endpoint_url or "")
        prefix = settings.s3_prefix.strip("/") + "/" if settings.s3_prefix else ""
        started = s3.create_multipart_upload(Bucket=settings.s3_bucket, Key=prefix + "cr/ash/left")
        s3.upload_part(
            Bucket=settings.s3_bucket,
            Key=prefix + "cr/ash/left",
            UploadId=started["UploadId"],
            PartNumber=1,
            Body=b"x" * (5 * 1024 * 1024),
        )
    else:
        part = settings.data_dir / "files" / "cr" / "ash" / ".left.0a1b2c3d.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"x" * 1000)
    assert server.stored_objects() != []

    if settings.storage == "local":  # moto dates every multipart upload 2010-11-10
        young = run_check(server)
        assert young.returncode == 0, young.stdout + young.stderr
        assert "0 unfinished uploads older than" in young.stdout
        assert "(1 younger left alone)" in young.stdout.splitlines()[-1], young.stdout
    found = run_check(server, "--grace", "0")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "unfinished upload: cr/ash/left (" in found.stdout, found.stdout
    fixed = run_check(server, "--grace", "0", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert server.stored_objects() == []
    assert run_check(server, "--grace", "0").returncode == 0
