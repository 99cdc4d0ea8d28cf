"""The server's own files: where a path lives (mounts), start-up overlaps, per-request refusal."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from asset_service.domain.errors import InvalidArgument, PermissionDenied
from asset_service.storage import own_files
from asset_service.storage.imports import ImportRoots
from asset_service.storage.own_files import OwnFiles, location

P = PurePosixPath
MOUNTS = [
    (P("/"), "254:0", P("/")),
    (P("/mnt/portal"), "254:0", P("/srv/data")),  # a bind mount of the storage root
    (P("/mnt/other disk"), "8:1", P("/")),
    (P("/mnt/over"), "8:1", P("/a")),
    (P("/mnt/over"), "8:1", P("/b")),  # mounted over the previous one: it is what is seen
]


def test_a_location_is_the_device_and_the_path_in_its_file_system() -> None:
    assert location("/srv/data/assets.db", MOUNTS) == ("254:0", P("/srv/data/assets.db"))
    assert location("/mnt/portal/assets.db", MOUNTS) == ("254:0", P("/srv/data/assets.db"))
    assert location("/mnt/other disk/x", MOUNTS) == ("8:1", P("/x"))
    assert location("/mnt/over/x", MOUNTS) == ("8:1", P("/b/x"))
    assert location("/mnt/portalx/y", MOUNTS) == ("254:0", P("/mnt/portalx/y"))


def test_mountinfo_fields_are_unescaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "27 1 254:0 / / rw - ext4 /dev/vda rw\n"
        "66 27 254:0 /srv/my\\040data /mnt/a\\040b rw - ext4 /dev/vda rw\n"
    )
    monkeypatch.setattr(own_files, "MOUNTINFO", str(table))
    assert own_files._mounts()[1] == (P("/mnt/a b"), "254:0", P("/srv/my data"))


def test_a_bind_mount_of_the_storage_root_under_an_import_root_is_seen_at_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(own_files, "_mounts", lambda: MOUNTS)
    own = OwnFiles(Path("/srv/data"))
    with pytest.raises(InvalidArgument, match="--import-root /mnt contains the storage root"):
        own.check_import_roots([Path("/mnt")])
    with pytest.raises(InvalidArgument, match="/mnt/portal is the storage root"):
        own.check_import_roots([Path("/mnt/portal")])
    with pytest.raises(InvalidArgument, match="/mnt/portal/uploads lies inside the storage root"):
        own.check_import_roots([Path("/mnt/portal/uploads")])
    own.check_import_roots([Path("/srv/incoming"), Path("/mnt/other disk")])


def test_an_import_root_holding_the_storage_root_cannot_reach_it_per_request(
    tmp_path: Path,
) -> None:
    """Per request, whatever the roots: the start-up check is not what protects the files."""
    storage, keys = tmp_path / "data", tmp_path / "keys"
    for folder in (storage / "uploads", keys):
        folder.mkdir(parents=True)
    (storage / "assets.db").write_bytes(b"SQLite format 3\x00")
    (storage / "uploads" / "stored.bin").write_bytes(b"stored")
    (keys / "secret").write_bytes(b"k" * 40)
    (tmp_path / "fine.txt").write_bytes(b"a worker's file")
    own = OwnFiles(storage, (("token secret file", keys / "secret"),))
    roots = ImportRoots([tmp_path], own=own)
    for path, message in [
        (storage / "assets.db", "lies in the server's storage root"),
        (storage / "uploads" / "stored.bin", "lies in the server's storage root"),
        (keys / "secret", "is the server's token secret file"),
    ]:
        with pytest.raises(PermissionDenied, match=message):
            roots.open(str(path), exclusive=True)
    roots.open(str(tmp_path / "fine.txt"), exclusive=True).close()
