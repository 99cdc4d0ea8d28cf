"""Local storage: staging sweep of dead processes, rollback of moved files, safe keys."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asset_service.domain.errors import InvalidArgument
from asset_service.storage.local import LocalStorage

ID = "5b0e4f0e-0000-4000-8000-000000000000"


async def test_sweeps_staging_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / "tmp" / "staging" / "123-dead"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()
    (dead / "half-written").write_bytes(b"x" * 100)
    live = LocalStorage(tmp_path)
    await live.open()
    assert not dead.exists()
    # A second process on the same root must leave the live one's staging alone.
    writer = live.new_writer()
    await writer.write(b"in flight")
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from asset_service.storage.local import LocalStorage; "
        "s = LocalStorage(Path(sys.argv[1])); asyncio.run(s.open()); asyncio.run(s.close())"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert writer.path.exists()
    await writer.rollback()
    assert not writer.path.exists()
    await live.close()


async def test_commit_then_rollback_gives_moved_source_back(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    await storage.open()
    source = tmp_path / "root" / "incoming.txt"  # same filesystem: moved, not copied
    source.write_text("worker output")
    staged = await storage.ingest(source, move=True)
    assert not source.exists() and staged.size_bytes == len("worker output")
    final = await staged.commit(storage.generated_key("task", ID, "out.txt"))
    assert Path(final).read_text() == "worker output"
    await staged.rollback()
    assert source.read_text() == "worker output" and not Path(final).exists()
    assert not Path(final).parent.exists()  # the empty per-asset folder went too
    await storage.close()


async def test_keys_are_derived_never_raw(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert storage.upload_key(ID, "../../etc/passwd", now) == f"uploads/2026-01-02/{ID}/etc_passwd"
    with pytest.raises(InvalidArgument):
        storage.generated_key("../x", ID, "a")
    with pytest.raises(InvalidArgument):
        storage.path_for("../outside")
    with pytest.raises(InvalidArgument):
        storage.upload_key("../" + ID, "a", now)


async def test_writer_hashes_and_fsyncs(tmp_path: Path) -> None:
    import hashlib

    storage = LocalStorage(tmp_path)
    await storage.open()
    writer = storage.new_writer()
    for part in (b"a" * 100, b"b" * 200_000):
        await writer.write(part)
    await writer.seal()
    assert writer.sha256 == hashlib.sha256(b"a" * 100 + b"b" * 200_000).hexdigest()
    path = await writer.commit(storage.upload_key(ID, "x.bin", datetime.now(UTC)))
    await writer.finish()
    await writer.rollback()  # after finish, a rollback must not remove committed bytes
    assert os.path.getsize(path) == 200_100
    await storage.close()


async def test_sweep_scratch_removes_only_old_folders(tmp_path: Path) -> None:
    import time

    storage = LocalStorage(tmp_path)
    await storage.open()
    old, fresh = storage.scratch_dir("manifests"), storage.scratch_dir("manifests")
    (old / "input_data.json").write_text("{}")
    day_ago = time.time() - 86400
    os.utime(old, (day_ago, day_ago))
    assert await storage.sweep_scratch("manifests", 3600) == 1
    assert not old.exists() and fresh.exists()
    assert await storage.sweep_scratch("nothing-here", 0) == 0
    await storage.close()


async def test_commits_never_clobber_each_other(tmp_path: Path) -> None:
    import time

    from asset_service.domain.errors import Conflict

    storage = LocalStorage(tmp_path, orphan_grace_seconds=60)
    await storage.open()
    key = storage.generated_key("task", ID, "out.bin")
    first, second = storage.new_writer(), storage.new_writer()
    for writer, data in ((first, b"first"), (second, b"second")):
        await writer.write(data)
        await writer.seal()
    path = await first.commit(key)
    with pytest.raises(Conflict, match="another request"):
        await second.commit(key)  # a racing server's commit of the same asset
    await second.rollback()
    assert Path(path).read_bytes() == b"first", "the first commit's bytes must survive"
    # A file left by a crash long ago is replaced, not a reason to refuse forever.
    long_ago = time.time() - 3600
    os.utime(path, (long_ago, long_ago))
    third = storage.new_writer()
    await third.write(b"third")
    await third.seal()
    assert await third.commit(key) == path
    assert Path(path).read_bytes() == b"third"
    assert [p for p in storage.staging.iterdir() if p.name != ".lock"] == []
    await storage.close()
