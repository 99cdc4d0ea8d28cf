"""Local storage: staging of dead processes, moves that keep the source until finish, keys."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain import keys
from asset_service.domain.errors import (
    Conflict,
    IntegrityError,
    InvalidArgument,
    Occupied,
    PermissionDenied,
)
from asset_service.storage import keys as storage_keys
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local import LocalStorage, _keyhold
from asset_service.storage.local._blobs import Adopted, Writer

ID = "5b0e4f0e-0000-4000-8000-000000000000"


def storage_with_imports(tmp_path: Path, **kwargs: object) -> tuple[LocalStorage, Path]:
    incoming = tmp_path / "root" / "incoming"  # same filesystem as the storage: linked
    incoming.mkdir(parents=True)
    storage = LocalStorage(tmp_path / "root", imports=ImportRoots([incoming]), **kwargs)  # type: ignore[arg-type]
    return storage, incoming


async def moving(tmp_path: Path, text: str = "worker output") -> tuple[LocalStorage, Path, Adopted]:
    """Storage with an import root, open, and a worker's out.txt there adopted by a move."""
    storage, incoming = storage_with_imports(tmp_path)
    await storage.open()
    source = incoming / "out.txt"
    source.write_text(text)
    return storage, source, await storage.adopt(str(source), move=True)


async def test_sweeps_staging_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / "tmp" / "staging" / "123-dead"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()
    (dead / "half-written").write_bytes(b"x" * 100)
    live = LocalStorage(tmp_path)
    await live.open()
    assert await live.leftovers() == []
    assert await live.sweep_dead_staging() == 1
    assert not dead.exists()
    # A second process on the same root must leave the live one's staging alone.
    writer = live.new_writer()
    await writer.write(b"in flight")
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from asset_service.storage.local import LocalStorage\n"
        "async def main():\n"
        "    s = LocalStorage(Path(sys.argv[1])); await s.open()\n"
        "    await s.sweep_dead_staging(); await s.close()\n"
        "asyncio.run(main())"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert writer.path.exists()
    await writer.rollback()
    assert not writer.path.exists()
    await live.close()


async def test_a_move_keeps_the_source_until_finish(tmp_path: Path) -> None:
    storage, source, staged = await moving(tmp_path)
    assert staged.sha256 == hashlib.sha256(b"worker output").hexdigest()
    final = Path(await staged.commit(keys.generated_key("task", ID, "out.txt")))
    # Linked, not renamed: a crash now cannot lose the worker's file.
    assert source.read_text() == "worker output" and final.read_text() == "worker output"
    assert source.stat().st_ino == final.stat().st_ino
    assert len(list(storage.intents.iterdir())) == 1, "the move is journaled"
    await staged.finish()
    assert not source.exists() and final.read_text() == "worker output"
    assert list(storage.intents.iterdir()) == []
    await storage.close()


async def test_rollback_after_commit_keeps_the_source(tmp_path: Path) -> None:
    storage, source, staged = await moving(tmp_path)
    final = Path(await staged.commit(keys.generated_key("task", ID, "out.txt")))
    await staged.rollback()
    assert source.read_text() == "worker output" and not final.exists()
    assert not final.parent.exists()  # the empty per-asset folder went too
    assert source.stat().st_nlink == 1
    await storage.close()


async def test_a_second_adoption_of_a_file_being_moved_is_refused(tmp_path: Path) -> None:
    storage, source, first = await moving(tmp_path, "x")
    with pytest.raises(Conflict, match="being adopted by another request"):
        await storage.adopt(str(source), move=True)
    with pytest.raises(Conflict, match="being adopted by another request"):
        await storage.adopt(str(source), move=False)
    await first.rollback()
    again = await storage.adopt(str(source), move=False)  # free once the first let go
    await again.rollback()
    await storage.close()


@pytest.mark.parametrize("then", ["removed", "moved away"])
async def test_a_source_that_vanishes_before_its_link_is_a_conflict(
    tmp_path: Path, then: str
) -> None:
    """Another request moved the file (or the worker removed it) after this one opened
    it: linking its name then fails with ENOENT, which must be a clear ABORTED-class
    Conflict that leaves nothing behind, never an unexpected OSError (INTERNAL)."""
    storage, source, staged = await moving(tmp_path)
    if then == "removed":
        source.unlink()
    else:
        source.rename(source.with_name("elsewhere.txt"))
    with pytest.raises(Conflict, match="moved or removed while it was being adopted"):
        await staged.commit(keys.generated_key("task", ID, "out.txt"))
    await staged.rollback()
    assert list(storage.intents.iterdir()) == [], "no journal entry is left"
    assert not (storage.generated / "task").exists() or not any(
        p.is_file() for p in (storage.generated / "task").rglob("*")
    )
    await storage.close()


async def test_recovery_settles_journaled_moves_by_their_record(tmp_path: Path) -> None:
    """A process died after linking two sources: one record committed, one did not."""
    storage, incoming = storage_with_imports(tmp_path)
    await storage.open()
    ids = ["5b0e4f0e-0000-4000-8000-00000000000a", "5b0e4f0e-0000-4000-8000-00000000000b"]
    finals = []
    for asset_id in ids:
        (incoming / asset_id).write_text(asset_id)
        staged = await storage.adopt(str(incoming / asset_id), move=True)
        finals.append(Path(await staged.commit(keys.generated_key("t", asset_id, "f"))))
        staged.abandon()  # as if the process died here: no finish, no rollback
    await storage.close()  # leaves its staging (it holds journals) for the next process

    after = LocalStorage(tmp_path / "root", imports=ImportRoots([incoming]))
    await after.open()
    leftovers = {lo.asset_id: lo for lo in await after.leftovers()}
    assert set(leftovers) == set(ids)
    await after.settle(leftovers[ids[0]], committed=True)
    await after.settle(leftovers[ids[1]], committed=False)
    assert not (incoming / ids[0]).exists() and finals[0].read_text() == ids[0]
    assert (incoming / ids[1]).read_text() == ids[1] and not finals[1].exists()
    assert await after.sweep_dead_staging() == 1
    assert [p.name for p in (tmp_path / "root" / "tmp" / "staging").iterdir()] == [
        after.staging.name
    ]
    await after.close()


async def test_recovery_never_removes_a_source_whose_final_is_not_its_own(tmp_path: Path) -> None:
    storage, incoming = storage_with_imports(tmp_path)
    await storage.open()
    (incoming / "s").write_text("source")
    staged = await storage.adopt(str(incoming / "s"), move=True)
    final = Path(await staged.commit(keys.generated_key("t", ID, "f")))
    staged.abandon()
    await storage.close()
    final.unlink()
    final.write_text("someone else's bytes")  # a different file now stands there
    after = LocalStorage(tmp_path / "root", imports=ImportRoots([incoming]))
    await after.open()
    [leftover] = await after.leftovers()
    await after.settle(leftover, committed=True)
    assert (incoming / "s").read_text() == "source", "never neither: the source stays"
    await after.close()


async def test_hardlinked_and_symlinked_sources_are_refused(tmp_path: Path) -> None:
    storage, incoming = storage_with_imports(tmp_path)
    await storage.open()
    secret = tmp_path / "secret"
    secret.write_text("secret")
    os.link(secret, incoming / "linked")
    with pytest.raises(PermissionDenied, match="--allow-hardlinked-imports"):
        await storage.adopt(str(incoming / "linked"), move=False)
    (incoming / "d").symlink_to(tmp_path)
    with pytest.raises(PermissionDenied, match="symbolic link") as info:
        await storage.adopt(str(incoming / "d" / "secret"), move=False)
    assert str(tmp_path) + "'" not in info.value.message.replace(str(incoming), "")
    await storage.close()
    allowed = LocalStorage(tmp_path / "root", imports=ImportRoots([incoming], allow_hardlinks=True))
    await allowed.open()
    staged = await allowed.adopt(str(incoming / "linked"), move=True)  # copied, not linked
    final = Path(await staged.commit(keys.generated_key("t", ID, "f")))
    await staged.finish()
    assert final.stat().st_ino != secret.stat().st_ino and secret.read_text() == "secret"
    await allowed.close()


async def test_reads_check_size_and_never_follow_symlinks(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    await storage.open()
    writer = storage.new_writer()
    await writer.write(b"0123456789")
    await writer.seal()
    path = Path(await writer.commit(keys.upload_key(ID, "x", datetime.now(UTC))))
    await writer.finish()
    chunks = await storage.read(str(path), 10, 0, 0, 4)
    assert b"".join([c async for c in chunks]) == b"0123456789"
    with pytest.raises(IntegrityError, match="record says 11"):
        await storage.read(str(path), 11, 0, 0, 4)
    path.unlink()
    (tmp_path / "elsewhere").write_bytes(b"0123456789")
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(IntegrityError, match="not a regular file"):
        await storage.check(str(path), 10)
    await storage.close()


async def test_keys_are_derived_never_raw(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert keys.upload_key(ID, "../../etc/passwd", now) == f"uploads/2026-01-02/{ID}/etc_passwd"
    with pytest.raises(InvalidArgument):
        keys.generated_key("../x", ID, "a")
    with pytest.raises(InvalidArgument):
        storage_keys.key_parts("uploads/../../outside")
    with pytest.raises(InvalidArgument):
        storage_keys.key_parts("tmp/x")
    with pytest.raises(InvalidArgument):
        keys.upload_key("../" + ID, "a", now)


@dataclass(frozen=True)
class Synced:
    """One fsync(2)/fdatasync(2): what the fd was, and (a folder) the names in it then."""

    call: str
    inode: int
    is_dir: bool
    names: frozenset[str]


def record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[Synced]:
    """Wrap os.fsync and os.fdatasync (every thread) to note each call, then make it."""
    calls: list[Synced] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def recorder(fd: int, real: Any = real, name: str = name) -> None:
            st = os.fstat(fd)
            is_dir = stat.S_ISDIR(st.st_mode)
            names = frozenset(os.listdir(fd)) if is_dir else frozenset()
            calls.append(Synced(name, st.st_ino, is_dir, names))
            real(fd)

        monkeypatch.setattr(os, name, recorder)
    return calls


async def test_writer_hashes_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before commit() returns, the bytes and the name are on disk: the staging file is
    fsynced before it is linked into place (by seal()), and the destination folder after
    the link, so a power cut after the record cannot leave it without its file."""
    storage = LocalStorage(tmp_path)
    await storage.open()
    syncs = record_syncs(monkeypatch)
    writer = storage.new_writer()
    for part in (b"a" * 100, b"b" * 200_000):
        await writer.write(part)
    await writer.seal()
    sealed = list(syncs)
    assert writer.sha256 == hashlib.sha256(b"a" * 100 + b"b" * 200_000).hexdigest()
    path = Path(await writer.commit(keys.upload_key(ID, "x.bin", datetime.now(UTC))))
    committed = list(syncs)
    await writer.finish()
    await writer.rollback()  # after finish, a rollback must not remove committed bytes
    assert os.path.getsize(path) == 200_100
    file, folder = os.stat(path), os.stat(path.parent)
    # The staging file is the stored file's inode (linked, not copied).
    assert any(s.inode == file.st_ino and not s.is_dir for s in sealed), (
        f"the staging file was not fsynced by seal(): {sealed}"
    )
    assert any(s.inode == folder.st_ino and path.name in s.names for s in committed), (
        f"the folder {path.parent} was not fsynced after {path.name} appeared in it: {committed}"
    )
    await storage.close()


@pytest.mark.parametrize("move", [True, False], ids=["linked", "copied"])
async def test_adopted_bytes_are_fsynced_before_commit_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, move: bool
) -> None:
    """A worker's file becomes the stored file (moved: the same inode, linked; copied: a new
    one): its bytes and its name in storage are fsynced before commit() returns, whether or
    not the worker fsynced it, or a power cut after the record could lose them."""
    storage, incoming = storage_with_imports(tmp_path)
    await storage.open()
    source = incoming / "out.bin"
    source.write_bytes(b"worker output, not fsynced by the worker" * 1000)
    syncs = record_syncs(monkeypatch)
    staged = await storage.adopt(str(source), move=move)
    path = Path(await staged.commit(keys.generated_key("task", ID, "out.bin")))
    committed = list(syncs)
    await staged.finish()
    file, folder = os.stat(path), os.stat(path.parent)
    assert any(s.inode == file.st_ino and not s.is_dir for s in committed), (
        f"the stored file's bytes were not fsynced: {committed}"
    )
    assert any(s.inode == folder.st_ino and path.name in s.names for s in committed), (
        f"the folder {path.parent} was not fsynced after {path.name} appeared in it"
    )
    assert source.exists() is not move
    await storage.close()


async def sealed(storage: LocalStorage, data: bytes) -> Writer:
    writer = storage.new_writer()
    await writer.write(data)
    await writer.seal()
    return writer


async def test_commits_never_clobber_each_other(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, orphan_grace_seconds=60)
    await storage.open()
    key = keys.generated_key("task", ID, "out.bin")
    first, second = await sealed(storage, b"first"), await sealed(storage, b"second")
    path = await first.commit(key)
    with pytest.raises(Conflict, match="another request"):
        await second.commit(key)  # a racing server's commit of the same asset
    await second.rollback()
    assert Path(path).read_bytes() == b"first", "the first commit's bytes must survive"
    # Still live, however old: never replaced.
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    third = await sealed(storage, b"third")
    with pytest.raises(Conflict, match="another request"):
        await third.commit(key)
    # Settled, its bytes are a record's or a crash leftover: the caller checks the records.
    await first.finish()
    with pytest.raises(Occupied) as occupied:
        await third.commit(key)
    assert await occupied.value.replace() == path
    await third.finish()
    assert Path(path).read_bytes() == b"third"
    assert [p for p in storage.staging.iterdir() if p.name not in (".lock", "intents")] == []
    await storage.close()


async def test_without_flock_the_grace_tells_a_leftover_from_a_live_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses flock on folders (some network ones): no key is held,
    so a file at the name is a Conflict while young and replaced past the grace."""
    real = _keyhold.fcntl.flock

    def no_folder_locks(fd: int, operation: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOLCK, "no locks available")
        real(fd, operation)

    monkeypatch.setattr(_keyhold.fcntl, "flock", no_folder_locks)
    storage = LocalStorage(tmp_path, orphan_grace_seconds=60)
    await storage.open()
    key = keys.generated_key("task", ID, "out.bin")
    first, second = await sealed(storage, b"first"), await sealed(storage, b"second")
    path = await first.commit(key)
    first.abandon()
    with pytest.raises(Conflict, match="another request") as refused:
        await second.commit(key)
    assert not isinstance(refused.value, Occupied), "without a hold, nothing tells it is dead"
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    assert await second.commit(key) == path
    await second.finish()
    assert Path(path).read_bytes() == b"second"
    await storage.close()


def test_journal_is_plain_json(tmp_path: Path) -> None:
    """Operators may read a journal entry: it names the source and the final key."""
    storage = LocalStorage(tmp_path)
    storage.intents.mkdir(parents=True)
    journal = storage.write_intent({"source": "/in/x", "final": "generated/t/i/x"})
    assert json.loads(journal.read_text())["source"] == "/in/x"
