"""Shared VALUE files for manifests: each distinct content once, read-only, swept when unused."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from asset_service.domain.models import Asset
from asset_service.modes import PRIVATE_FILE, Modes
from asset_service.storage import fs

log = logging.getLogger(__name__)

# A manifest folder without input_data.json is a draft a crashed server left (a .part here,
# a file it was writing); one this old is swept even when finished manifests are kept
# longer. Writing one takes seconds, but copying big inputs from an object store may take
# long, so the grace is generous.
DRAFT_GRACE_SECONDS = 86400.0

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_new_at(
    folder: int, name: str, data: bytes, modes: Modes, read_only: bool = False
) -> None:
    """A new file `name` in the folder `folder` (an fd) holding `data`; never overwrites.
    Shared with --share-group's group: tasks read manifests and VALUE files by path."""
    fd = modes.new_file(name, _NEW_FILE_FLAGS, shared=True, read_only=read_only, dir_fd=folder)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


# A shared VALUE file a manifest uses again gets its mtime (the sweep's clock) set to now
# at most this often: a write per use would cost what writing the file again costs.
VALUE_TOUCH_SECONDS = 60.0


class ValueFiles:
    """<root>/tmp/values/<sha256 of the content><suffix>: each distinct VALUE content once,
    shared by every manifest that names it, as FILE inputs are their stored files.

    Creating 500 small files per manifest cost 15-90 ms (ext4 metadata, slower while the
    disk writes back other data); using them again costs a read each. Files are created
    read-only (_write_at); each use compares the file byte for byte with the value and
    writes it again when it differs (a task that wrote to its input, a crash or a manifest
    still writing it that left it short), so a finished manifest names complete files. Files
    unused for the manifest TTL are swept. An flock on .lock (shared while manifests use
    files, exclusive while the sweep removes them) keeps a sweep from removing a file a
    manifest has just checked, across processes sharing the root too.
    """

    def __init__(self, folder: Path, modes: Modes | None = None) -> None:
        self.folder = folder
        self.modes = modes or Modes()
        self._lock = folder / ".lock"

    def open_sync(self) -> str | None:
        """Make the folder and its lock; what start-up changed of an older install's modes."""
        changed = self.modes.folder(self.folder, shared=True)
        os.close(os.open(self._lock, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, PRIVATE_FILE))
        return changed

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[int]:
        """The folder's fd, under an flock of `how` on .lock."""
        lock = os.open(self._lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, how)
            folder = os.open(self.folder, fs.DIR_FLAGS)
            try:
                yield folder
            finally:
                os.close(folder)
        finally:
            os.close(lock)

    def place(self, assets: Sequence[Asset]) -> tuple[dict[str, str], list[Path]]:
        """({asset id: path of its content}, the files written now, not yet synced)."""
        paths: dict[str, str] = {}
        written: list[Path] = []
        now = time.time()
        with self._locked(fcntl.LOCK_SH) as folder:
            for asset in assets:
                assert asset.value is not None, f"asset {asset.id} has no value"
                data = asset.value.data
                # Named by a digest of the content computed here, never by the
                # (untrusted) key or label.
                name = hashlib.sha256(data).hexdigest() + asset.value.kind.suffix
                if not _holds(folder, name, data, now):
                    _write_at(folder, name, data, self.modes)
                    written.append(self.folder / name)
                paths[asset.id] = str(self.folder / name)
        return paths, written

    def sweep_sync(self, older_than_seconds: float) -> int:
        """Remove files unused for that long (and parts a crash left); how many."""
        now = time.time()
        cutoff = now - older_than_seconds - VALUE_TOUCH_SECONDS
        part_cutoff = now - DRAFT_GRACE_SECONDS
        removed = 0
        with contextlib.suppress(FileNotFoundError), self._locked(fcntl.LOCK_EX) as folder:
            for entry in os.scandir(folder):
                if entry.name.startswith("."):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    if mtime < (part_cutoff if entry.name.endswith(".part") else cutoff):
                        os.unlink(entry.name, dir_fd=folder)
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    log.warning("could not remove %s: %s", self.folder / entry.name, exc)
        return removed


def _write_at(folder: int, name: str, data: bytes, modes: Modes) -> None:
    """folder/name holding `data`, read-only. A missing name is created in place (a rename
    more doubled the cost of a new file): a manifest using it meanwhile, or after a crash,
    finds it short and writes it again. A name that exists with other content is replaced
    by a rename, never written in place: tasks of earlier manifests may be reading it."""
    try:
        write_new_at(folder, name, data, modes, read_only=True)
        return
    except FileExistsError:
        pass
    part = f"{name}.{uuid.uuid4().hex}.part"
    write_new_at(folder, part, data, modes, read_only=True)
    try:
        os.rename(part, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part, dir_fd=folder)
        raise


def _holds(folder: int, name: str, data: bytes, now: float) -> bool:
    """Whether folder/name is a regular file holding exactly `data` (touched if need be)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return False  # missing, a symlink, or unreadable: written again
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(data):
            return False
        if os.read(fd, len(data) + 1) != data:
            return False
        if st.st_mtime < now - VALUE_TOUCH_SECONDS:
            os.utime(fd)
        return True
    finally:
        os.close(fd)
