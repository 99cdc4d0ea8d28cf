"""File modes: owner-only whatever the umask, --share-group's group where it shares."""

from __future__ import annotations

import argparse
import contextlib
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from asset_service.config import load_settings, parse_group
from asset_service.domain import keys
from asset_service.domain.errors import InvalidArgument
from asset_service.modes import Modes
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local import LocalStorage
from asset_service.store.sqlite import SqliteStore

ID = "5b0e4f0e-0000-4000-8000-000000000000"
OTHER_GID = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != os.getgid())


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_folders_and_files_get_their_modes_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    private, shared = Modes(), Modes(OTHER_GID)
    with umask(mask):
        assert private.folder(tmp_path / "a" / "b", shared=True) is None
        assert shared.folder(tmp_path / "s" / "t", shared=True) is None
        os.close(shared.new_file(tmp_path / "s" / "f", os.O_WRONLY, shared=True))
        os.close(shared.new_file(tmp_path / "s" / "v", os.O_WRONLY, True, read_only=True))
        os.close(shared.new_file(tmp_path / "s" / "p", os.O_WRONLY, shared=False))
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
    assert mode(tmp_path / "s") == mode(tmp_path / "s" / "t") == 0o750
    assert (tmp_path / "s" / "t").stat().st_gid == OTHER_GID
    assert (mode(tmp_path / "s" / "f"), (tmp_path / "s" / "f").stat().st_gid) == (0o640, OTHER_GID)
    assert mode(tmp_path / "s" / "v") == 0o440
    assert mode(tmp_path / "s" / "p") == 0o600


def test_an_older_installs_folder_is_changed_and_reported(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    modes = Modes()
    assert modes.folder(old, shared=True) == f"{old} (from 755 to 700)"
    assert mode(old) == 0o700
    assert modes.folder(old, shared=True) is None  # once
    # Sharing it later gives the group the folder: reported too.
    assert Modes(OTHER_GID).folder(old, shared=True) == f"{old} (from 700 to 750)"
    assert old.stat().st_gid == OTHER_GID


def test_share_group_refused_when_the_server_may_not_give_files_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)
    with pytest.raises(InvalidArgument) as info:
        Modes(4242).root(tmp_path / "root")
    assert info.value.message == (
        f"--share-group 4242: cannot give {tmp_path / 'root'} to that group (Operation not "
        "permitted); the server's user must be a member of it"
    )


def test_share_group_takes_a_name_or_a_number() -> None:
    name = grp.getgrgid(OTHER_GID).gr_name
    assert parse_group(name) == OTHER_GID
    assert parse_group(str(OTHER_GID)) == OTHER_GID
    assert parse_group("") is None
    with pytest.raises(argparse.ArgumentTypeError, match="no group named 'no-such-group'"):
        parse_group("no-such-group")
    assert load_settings([], {"ASSET_SERVICE_SHARE_GROUP": name}).share_group == OTHER_GID
    assert load_settings(["--share-group", "0"], {}).share_group == 0
    assert load_settings([], {}).share_group is None


def storage_with_imports(tmp_path: Path, modes: Modes) -> tuple[LocalStorage, Path]:
    incoming = tmp_path / "root" / "incoming"  # same filesystem: moves are links
    incoming.mkdir(parents=True)
    return LocalStorage(tmp_path / "root", imports=ImportRoots([incoming]), modes=modes), incoming


async def test_a_moved_file_gets_the_stored_mode_and_its_own_back_on_rollback(
    tmp_path: Path,
) -> None:
    storage, incoming = storage_with_imports(tmp_path, Modes(OTHER_GID))
    await storage.open()
    try:
        source = incoming / "out.txt"
        source.write_text("worker output")
        source.chmod(0o644)
        os.chown(source, 65534, -1)  # a worker's (the tests run as root: the server may)
        staged = await storage.adopt(str(source), move=True)
        final = Path(await staged.commit(keys.generated_key("task", ID, "out.txt")))
        assert final.stat().st_ino == source.stat().st_ino  # linked: the same inode
        st = final.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, OTHER_GID)
        await staged.rollback()
        st = source.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o644, 65534, os.getgid())
    finally:
        await storage.close()


async def test_another_users_file_is_copied_not_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, incoming = storage_with_imports(tmp_path, Modes())
    await storage.open()
    try:
        source = incoming / "out.txt"
        source.write_text("worker output")
        source.chmod(0o644)
        staged = await storage.adopt(str(source), move=True)
        real = Modes.set_fd

        def not_ours(modes: Modes, fd: int, mode: int, shared: bool) -> None:
            if os.fstat(fd).st_ino == source.stat().st_ino:
                raise PermissionError(1, "Operation not permitted")
            real(modes, fd, mode, shared)

        monkeypatch.setattr(Modes, "set_fd", not_ours)
        final = Path(await staged.commit(keys.generated_key("task", ID, "out.txt")))
        assert final.stat().st_ino != source.stat().st_ino
        assert mode(final) == 0o600 and final.read_text() == "worker output"
        assert mode(source) == 0o644
        await staged.finish()
        assert not source.exists()  # still a move
    finally:
        await storage.close()


async def test_the_database_and_its_wal_are_owner_only_under_umask_0(tmp_path: Path) -> None:
    db = tmp_path / "db" / "assets.db"
    with umask(0o000):
        store = SqliteStore(db, reserve_bytes=1024 * 1024)
        await store.open()
        try:
            await store.ping()
            names = ["", "-wal", "-shm", ".lock", ".reserve"]
            assert {n: mode(db.with_name(db.name + n)) for n in names} == dict.fromkeys(
                names, 0o600
            )
            assert mode(db.parent) == 0o700
        finally:
            await store.close()
