"""What only the local backend does: small reads in one call, and its path checks on them.

The behaviour every backend shares is in test_storage_contract.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from filesvc.errors import StorageUnavailable
from filesvc.storage import ObjectNotFound
from filesvc.storage.local import LocalStorage

pytestmark = pytest.mark.anyio

DATA = bytes(range(256)) * 40  # 10 KiB
KEY = "ab/cdef/somefileid"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    storage = LocalStorage(tmp_path / "files")
    (storage.root / "ab" / "cdef").mkdir(parents=True)
    (storage.root / KEY).write_bytes(DATA)
    return storage


async def read_all(reader: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in reader]


@pytest.mark.parametrize("nowait", [True, False])
@pytest.mark.parametrize(
    ("offset", "length"), [(0, len(DATA)), (100, 50), (len(DATA) - 1, 1), (9000, 5000)]
)
async def test_a_small_read_is_one_chunk(
    storage: LocalStorage, nowait: bool, offset: int, length: int
) -> None:
    storage._nowait = nowait  # False: the worker-thread path
    chunks = await read_all(await storage.open_reader(KEY, offset, length))
    assert chunks == [DATA[offset : offset + length]]


async def test_a_read_past_the_end_is_empty(storage: LocalStorage) -> None:
    assert await read_all(await storage.open_reader(KEY, len(DATA) + 10, 10)) == []


async def test_larger_reads_stream_in_chunks(storage: LocalStorage) -> None:
    storage.chunk_size = 4096
    chunks = await read_all(await storage.open_reader(KEY, 10, len(DATA) - 10))
    assert [len(c) for c in chunks] == [4096, 4096, len(DATA) - 10 - 8192]
    assert b"".join(chunks) == DATA[10:]


async def test_a_missing_object_is_not_found(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.open_reader("ab/cdef/missing", 0, 10)


async def test_a_symlink_out_of_the_root_is_not_followed(
    storage: LocalStorage, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside")
    os.symlink(secret, storage.root / "ab" / "cdef" / "link")
    os.symlink(tmp_path, storage.root / "ab" / "out")
    for key in ("ab/cdef/link", "ab/out/secret"):
        with pytest.raises(ObjectNotFound):
            await storage.open_reader(key, 0, 7)


async def test_writes_stats_and_deletes_never_follow_a_symlink_out_of_the_root(
    storage: LocalStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    os.symlink(outside, storage.root / "ab" / "out")
    with pytest.raises(ObjectNotFound):
        await storage.create_writer("ab/out/new")
    with pytest.raises(ObjectNotFound):
        await storage.stat("ab/out/victim")
    await storage.delete("ab/out/victim")
    assert (outside / "victim").read_bytes() == b"keep me"
    assert list(outside.iterdir()) == [outside / "victim"]


def test_path_is_string_work_that_never_touches_the_disk(storage: LocalStorage) -> None:
    """It runs on the event loop: a symlink loop (or a hung mount) under the root
    must not make it stat anything; the checks that must stat run in a thread."""
    os.symlink("loop", storage.root / "loop")
    assert storage.path("loop/a/b") == storage.root / "loop" / "a" / "b"


async def test_a_symlink_inside_the_root_is_followed(storage: LocalStorage) -> None:
    os.symlink(storage.root / KEY, storage.root / "ab" / "cdef" / "alias")
    assert await read_all(await storage.open_reader("ab/cdef/alias", 0, 3)) == [DATA[:3]]


async def test_a_fifo_under_the_root_fails_a_read_at_once(storage: LocalStorage) -> None:
    os.mkfifo(storage.root / "ab" / "cdef" / "fifo")
    with anyio.fail_after(5), pytest.raises(StorageUnavailable):
        await storage.open_reader("ab/cdef/fifo", 0, 10)


@pytest.mark.parametrize("key", ["../escape", "ab/../../x", "/etc/passwd", "ab/.hidden"])
async def test_keys_outside_the_key_alphabet_are_not_found(storage: LocalStorage, key: str) -> None:
    with pytest.raises(ObjectNotFound):
        await storage.open_reader(key, 0, 10)


async def test_a_cancelled_streaming_read_closes_its_file(storage: LocalStorage) -> None:
    storage.chunk_size = 1024
    before = len(os.listdir("/proc/self/fd"))
    reader = await storage.open_reader(KEY, 0, len(DATA))
    with anyio.move_on_after(0) as scope:
        async for _ in reader:
            await anyio.sleep(1)
    assert scope.cancelled_caught
    await reader.aclose()  # type: ignore[attr-defined]
    assert len(os.listdir("/proc/self/fd")) == before
