"""lazyfs keeps exactly what was fsynced: each rule of tests/powerloss/README.md, checked."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crashloop._storage import fsync_folder
from tests.powerloss._lazyfs import LazyFS, LazyFSError, is_mounted


class Disk:
    """A lazyfs over `backing`, mounted at `mnt`; cut() leaves the backing folder as a
    disk after power loss and mounts it again."""

    def __init__(self, tmp_path: Path) -> None:
        self.backing = tmp_path / "disk"
        self.backing.mkdir()
        self.mnt = tmp_path / "mnt"
        self.fs = LazyFS(self.backing, self.mnt)

    def cut(self) -> dict[str, int]:
        report = self.fs.cut()
        self.fs.mount()
        return report

    def __truediv__(self, name: str) -> Path:
        return self.mnt / name


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    d = Disk(tmp_path)
    with d.fs:
        d.fs.mount()
        yield d
    assert not is_mounted(d.mnt)


def write(path: Path, data: bytes, sync: bool = False, mode: str = "wb") -> None:
    with open(path, mode) as out:
        out.write(data)
        out.flush()
        if sync:
            os.fsync(out.fileno())


def test_nothing_synced_nothing_kept(disk: Disk) -> None:
    write(disk / "a", b"data")
    (disk / "d").mkdir()
    report = disk.cut()
    assert os.listdir(disk.mnt) == []
    assert os.listdir(disk.backing) == []  # the backing folder is the disk after the cut
    assert report["unsynced_files"] == 1 and report["unsynced_dirs"] == 1


def test_file_fsync_without_folder_fsync_loses_a_new_file(disk: Disk) -> None:
    write(disk / "a", b"data", sync=True)
    disk.cut()
    assert not (disk / "a").exists()


def test_folder_fsync_without_file_fsync_keeps_an_empty_file(disk: Disk) -> None:
    write(disk / "a", b"data")
    fsync_folder(disk.mnt)
    disk.cut()
    assert (disk / "a").read_bytes() == b""


def test_file_and_folder_fsync_keep_both(disk: Disk) -> None:
    write(disk / "a", b"data", sync=True)
    fsync_folder(disk.mnt)
    disk.cut()
    assert (disk / "a").read_bytes() == b"data"
    assert (disk.backing / "a").read_bytes() == b"data"


def test_writes_after_the_fsync_are_lost(disk: Disk) -> None:
    write(disk / "a", b"x" * 10_000, sync=True)
    write(disk / "b", b"short", sync=True)
    write(disk / "c", b"c" * 5000, sync=True)
    fsync_folder(disk.mnt)
    write(disk / "a", b"appended", mode="ab")  # longer, not synced
    with open(disk / "b", "r+b") as f:  # overwritten in place, not synced
        f.write(b"LONG")
    os.truncate(disk / "c", 10)  # shorter, not synced
    disk.cut()
    assert (disk / "a").read_bytes() == b"x" * 10_000
    assert (disk / "b").read_bytes() == b"short"
    assert (disk / "c").read_bytes() == b"c" * 5000


def test_fdatasync_keeps_data_and_size(disk: Disk) -> None:
    write(disk / "a", b"old", sync=True)
    fsync_folder(disk.mnt)
    with open(disk / "a", "ab") as f:
        f.write(b" and new")
        f.flush()
        os.fdatasync(f.fileno())
    disk.cut()
    assert (disk / "a").read_bytes() == b"old and new"


def test_a_hole_reads_as_zeros(disk: Disk) -> None:
    with open(disk / "a", "wb") as f:
        f.seek(10_000)
        f.write(b"end")
        f.flush()
        os.fsync(f.fileno())
    fsync_folder(disk.mnt)
    disk.cut()
    assert (disk / "a").read_bytes() == bytes(10_000) + b"end"


def test_rename_without_folder_fsync_keeps_the_old_name(disk: Disk) -> None:
    write(disk / "old", b"data", sync=True)
    fsync_folder(disk.mnt)
    (disk / "old").rename(disk / "new")
    disk.cut()
    assert sorted(os.listdir(disk.mnt)) == ["old"]
    (disk / "old").rename(disk / "new")
    fsync_folder(disk.mnt)
    disk.cut()
    assert sorted(os.listdir(disk.mnt)) == ["new"]
    assert (disk / "new").read_bytes() == b"data"


def test_rename_over_a_file_without_folder_fsync_keeps_both_old_files(disk: Disk) -> None:
    write(disk / "target", b"before", sync=True)
    write(disk / "target.part", b"after", sync=True)
    fsync_folder(disk.mnt)
    (disk / "target.part").replace(disk / "target")
    disk.cut()
    assert (disk / "target").read_bytes() == b"before"
    assert (disk / "target.part").read_bytes() == b"after"


def test_rename_between_folders_each_side_on_its_own_fsync(disk: Disk) -> None:
    for d in ("src", "dst"):
        (disk / d).mkdir()
    write(disk / "src" / "f", b"data", sync=True)
    for d in ("src", "dst", ""):
        fsync_folder(disk / d)
    (disk / "src" / "f").rename(disk / "dst" / "f")
    fsync_folder(disk / "dst")  # only the new side
    disk.cut()
    # Both names: one file, linked twice (fsck would find the link count wrong).
    assert (disk / "src" / "f").read_bytes() == (disk / "dst" / "f").read_bytes() == b"data"
    assert (disk / "src" / "f").stat().st_ino == (disk / "dst" / "f").stat().st_ino
    (disk / "dst" / "f").unlink()
    fsync_folder(disk / "dst")
    (disk / "src" / "f").rename(disk / "dst" / "f")
    fsync_folder(disk / "src")  # only the old side: the file has no durable name left
    disk.cut()
    assert os.listdir(disk / "src") == os.listdir(disk / "dst") == []


def test_unlink_without_folder_fsync_comes_back(disk: Disk) -> None:
    write(disk / "a", b"data", sync=True)
    fsync_folder(disk.mnt)
    (disk / "a").unlink()
    disk.cut()
    assert (disk / "a").read_bytes() == b"data"
    (disk / "a").unlink()
    fsync_folder(disk.mnt)
    disk.cut()
    assert not (disk / "a").exists()


def test_hard_link_needs_its_folder_fsync(disk: Disk) -> None:
    (disk / "d").mkdir()
    write(disk / "a", b"data", sync=True)
    fsync_folder(disk.mnt)
    os.link(disk / "a", disk / "d" / "b")
    fsync_folder(disk.mnt)  # not d
    disk.cut()
    assert os.listdir(disk / "d") == []
    os.link(disk / "a", disk / "d" / "b")
    fsync_folder(disk / "d")
    disk.cut()
    assert (disk / "a").stat().st_ino == (disk / "d" / "b").stat().st_ino
    assert (disk / "a").stat().st_nlink == 2


def test_a_new_folder_needs_its_parent_fsync(disk: Disk) -> None:
    (disk / "d").mkdir()
    write(disk / "d" / "f", b"data", sync=True)
    fsync_folder(disk / "d")  # the folder's entries, but not its own name in the root
    disk.cut()
    assert not (disk / "d").exists()
    (disk / "d").mkdir()
    write(disk / "d" / "f", b"data", sync=True)
    fsync_folder(disk / "d")
    fsync_folder(disk.mnt)
    disk.cut()
    assert (disk / "d" / "f").read_bytes() == b"data"


def test_inode_numbers_modes_and_times_survive_remounts(disk: Disk) -> None:
    write(disk / "a", b"data", sync=True)
    os.chmod(disk / "a", 0o640)
    os.utime(disk / "a", ns=(1_000_000_000_000_000_000, 1_500_000_000_000_000_000))
    os.link(disk / "a", disk / "b")
    fsync_folder(disk.mnt)
    before = (disk / "a").stat()
    disk.cut()
    disk.fs.unmount()
    disk.fs.mount()
    after = (disk / "a").stat()
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mode,
        1_500_000_000_000_000_000,
    )
    assert (disk / "b").stat().st_ino == before.st_ino
    write(disk / "c", b"new")
    assert (disk / "c").stat().st_ino not in {before.st_ino, disk.mnt.stat().st_ino}


def test_a_clean_unmount_keeps_everything(disk: Disk) -> None:
    (disk / "d").mkdir()
    write(disk / "d" / "f", b"data")
    disk.fs.unmount()
    assert (disk.backing / "d" / "f").read_bytes() == b"data"
    disk.fs.mount()
    assert (disk / "d" / "f").read_bytes() == b"data"


@pytest.mark.parametrize(("synchronous", "kept"), [("FULL", True), ("NORMAL", False)])
def test_sqlite_commit_survives_only_when_synced(disk: Disk, synchronous: str, kept: bool) -> None:
    """WAL mode: FULL fsyncs the log at each commit; NORMAL only at checkpoints."""
    db = sqlite3.connect(disk / "t.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x)")  # durable either way: the schema is not under test
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("INSERT INTO t VALUES ('acknowledged')")
    disk.cut()  # the connection is still open: nothing closed or checkpointed it
    db.close()
    rows = sqlite3.connect(disk / "t.db").execute("SELECT x FROM t").fetchall()
    assert rows == ([("acknowledged",)] if kept else [])


def test_a_missing_binary_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYFS_BIN", str(tmp_path / "no-such-lazyfs"))
    (tmp_path / "disk").mkdir()
    with (
        pytest.raises(LazyFSError, match="make lazyfs"),
        LazyFS(tmp_path / "disk", tmp_path / "m") as fs,
    ):
        fs.mount()
