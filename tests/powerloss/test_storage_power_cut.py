"""Local storage across power cuts: its new folders and journals survive, recovery finishes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_service.domain import keys
from asset_service.storage import fs
from asset_service.storage.imports import ImportRoots
from asset_service.storage.journal import Journal
from asset_service.storage.local import LocalStorage
from tests.powerloss._lazyfs import LazyFS
from tests.powerloss._run import other_device

ASSET_ID = "5b0e4f0e-0000-4000-8000-00000000000a"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[LazyFS, Path]]:
    """A mounted lazyfs, and its mount point (empty, and on the disk already)."""
    (tmp_path / "disk").mkdir()
    with LazyFS(tmp_path / "disk", tmp_path / "mnt") as lazy:
        lazy.mount()
        yield lazy, tmp_path / "mnt"


def power_cut(lazy: LazyFS) -> None:
    lazy.cut()
    lazy.mount()


def test_a_file_committed_into_new_folders_survives(disk: tuple[LazyFS, Path]) -> None:
    """What the commit of an upload does: open_dir(create=True), link or write, fsync."""
    lazy, mnt = disk
    folder = fs.open_dir(mnt, ("uploads", "2026-01-01", "asset-id"), "shown", create=True)
    try:
        fd = os.open("name.bin", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=folder)
        os.write(fd, b"bytes")
        os.fsync(fd)
        os.close(fd)
        fs.fsync_dir(folder)
    finally:
        os.close(folder)
    power_cut(lazy)
    assert (mnt / "uploads" / "2026-01-01" / "asset-id" / "name.bin").read_bytes() == b"bytes"


async def test_a_local_move_journal_survives(disk: tuple[LazyFS, Path]) -> None:
    lazy, mnt = disk
    storage = LocalStorage(mnt / "data")
    await storage.open()
    journal = storage.write_intent({"final": "uploads/x/y/z"})
    await storage.close()  # as at a SIGKILL: the unsettled journal stays
    power_cut(lazy)
    assert json.loads(journal.read_text()) == {"final": "uploads/x/y/z"}
    for area in ("uploads", "generated"):
        assert (mnt / "data" / area).is_dir()


def test_an_s3_move_journal_survives(disk: tuple[LazyFS, Path]) -> None:
    lazy, mnt = disk
    journal = Journal(mnt / "state", "instance")
    journal.open()
    entry = journal.write({"source": "/incoming/a"})
    journal.close()  # as at a SIGKILL: the unsettled journal stays
    power_cut(lazy)
    assert json.loads(entry.read_text()) == {"source": "/incoming/a"}


async def test_a_committed_move_is_finished_after_a_cut_that_renumbers_devices(
    disk: tuple[LazyFS, Path], tmp_path: Path
) -> None:
    """A reboot may give the disk another device number than the journal recorded."""
    lazy, mnt = disk
    incoming = mnt / "incoming"
    incoming.mkdir()
    parent = os.open(mnt, os.O_RDONLY)
    fs.fsync_dir(parent)
    os.close(parent)
    source = incoming / "output.bin"
    with open(source, "wb") as out:  # the worker's file, durable
        out.write(b"worker output")
        out.flush()
        os.fsync(out.fileno())
    folder = os.open(incoming, os.O_RDONLY)
    os.fsync(folder)
    os.close(folder)
    storage = LocalStorage(mnt / "data", imports=ImportRoots([incoming]))
    await storage.open()
    staged = await storage.adopt(str(source), move=True)
    final = Path(await staged.commit(keys.generated_key("t", ASSET_ID, "f")))
    staged.abandon()  # killed after its record committed, before the source went
    await storage.close()
    device = os.stat(mnt).st_dev
    lazy.cut()
    with other_device(tmp_path / "placeholder"):
        lazy.mount()
    assert os.stat(mnt).st_dev != device

    after = LocalStorage(mnt / "data", imports=ImportRoots([incoming]))
    await after.open()
    [leftover] = await after.leftovers()
    await after.settle(leftover, committed=True)
    assert final.read_bytes() == b"worker output"
    assert not source.exists(), "a committed move must not leave its source"
    await after.close()


async def test_a_resumable_upload_keeps_its_last_checkpoint_and_no_more(
    disk: tuple[LazyFS, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """committed_bytes never claims more than a power cut leaves: the offset is recorded
    only after the bytes before it were fdatasynced, and a resume cuts the rest."""
    import asyncio
    import hashlib
    from datetime import UTC, datetime, timedelta

    from asset_service.domain.models import UploadHeader
    from asset_service.domain.uploads import UploadSession
    from asset_service.storage.local import _sessions

    lazy, mnt = disk
    monkeypatch.setattr(_sessions, "CHECKPOINT_BYTES", 1024 * 1024)
    data = os.urandom(3 * 1024 * 1024 + 512 * 1024)
    now = datetime.now(UTC)
    record = UploadSession("upload-01", "w", UploadHeader(label="x"), now, now + timedelta(1))
    storage = LocalStorage(mnt / "data")
    await storage.open()
    writer = await storage.new_session("k" * 40, record)
    for start in range(0, len(data), 256 * 1024):
        await writer.write(data[start : start + 256 * 1024])
    for _ in range(500):  # every byte written by the sink's thread (checkpoints done)
        if writer._sink.queued_bytes == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.01)
    writer.release()  # the process dies: no suspend, nothing more made durable
    await storage.close()
    power_cut(lazy)

    storage = LocalStorage(mnt / "data")
    await storage.open()
    found = await storage.read_session("k" * 40)
    assert found is not None and found.committed_bytes == 3 * 1024 * 1024
    hold = await storage.take_session("k" * 40)
    assert hold is not None
    resumed = await hold.resume()
    assert resumed.size_bytes == 3 * 1024 * 1024
    await resumed.write(data[resumed.size_bytes :])
    await resumed.seal()
    assert resumed.sha256 == hashlib.sha256(data).hexdigest()
    resumed.release()
    await storage.close()
