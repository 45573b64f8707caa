"""A store whose file vanishes or is replaced while open refuses to acknowledge writes.

SQLite keeps writing through its open descriptors to a deleted (or renamed-over) file; before
the fix every such write was acknowledged and gone on reopen.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raygrain.actors import ActorId, StorageError
from raygrain.storage import SqliteStorage

ALICE = ActorId("test.Account", "alice")


@pytest.mark.parametrize("files", [("",), ("", "-wal", "-shm")], ids=["db", "db+wal+shm"])
async def test_a_deleted_database_file_fails_writes_instead_of_acknowledging_them(
    tmp_path: Path, files: tuple[str, ...]
) -> None:
    path = tmp_path / "state.db"
    async with SqliteStorage(path) as store:
        etag = await store.write(ALICE, b"1", None)
        for suffix in files:
            os.unlink(f"{path}{suffix}")
        with pytest.raises(StorageError, match="was deleted while open"):
            await store.write(ALICE, b"2", etag)
        with pytest.raises(StorageError, match="was deleted while open"):
            await store.write(ALICE, b"3", etag)  # and it keeps refusing


async def test_a_database_file_replaced_by_another_fails_writes(tmp_path: Path) -> None:
    path, other = tmp_path / "state.db", tmp_path / "other.db"
    async with SqliteStorage(other) as second:
        await second.write(ALICE, b"other", None)
    async with SqliteStorage(path) as store:
        etag = await store.write(ALICE, b"1", None)
        os.replace(other, path)
        with pytest.raises(StorageError, match="replaced by another file"):
            await store.write(ALICE, b"2", etag)


async def test_a_store_whose_file_stays_put_keeps_acknowledging(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "state.db") as store:
        etag = None
        for value in range(5):
            etag = await store.write(ALICE, str(value).encode(), etag)
    async with SqliteStorage(tmp_path / "state.db") as store:
        assert (await store.read(ALICE)).data == b"4"


async def test_a_deleted_database_file_fails_reminder_changes_too(tmp_path: Path) -> None:
    # (Reminder registrations, removals and tick records went to the deleted file and were
    # acknowledged: a reminder registered then was gone on reopen.)
    path = tmp_path / "state.db"
    async with SqliteStorage(path) as store:
        kept = await store.upsert_reminder(ALICE, "kept", 10.0, 60.0)
        for suffix in ("", "-wal", "-shm"):
            os.unlink(f"{path}{suffix}")
        with pytest.raises(StorageError, match="was deleted while open"):
            await store.upsert_reminder(ALICE, "poll", 10.0, 60.0)
        with pytest.raises(StorageError, match="was deleted while open"):
            await store.remove_reminder(ALICE, "kept", kept.etag)
