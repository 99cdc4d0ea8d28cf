"""File modes of what the server writes: owner-only, or shared with one group (--share-group).

Modes are set explicitly on what is created (fchmod after the open or mkdir), so neither a
permissive umask nor a strict one changes them; the server also runs with umask 077
(cli.py), which covers what libraries create (SQLite's -wal and -shm follow the database
file's mode anyway). Shared means group-readable (files 0640, folders 0750) and owned by
the group: stored files and their folders, manifests and the VALUE files they name, and the
folders above them. Everything else (the database, staging, journals, locks) is 0600/0700.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from asset_service.domain.errors import InvalidArgument

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Modes:
    """`gid`: the group stored files and manifests are shared with (None: nobody).

    One per server: it remembers the folders it made, whose modes are no news.
    """

    gid: int | None = None
    made: set[Path] = field(default_factory=set)

    def file(self, shared: bool, read_only: bool = False) -> int:
        mode = 0o640 if shared and self.gid is not None else PRIVATE_FILE
        return mode & 0o444 if read_only else mode

    def dir(self, shared: bool) -> int:
        return 0o750 if shared and self.gid is not None else PRIVATE_DIR

    def set_fd(self, fd: int, mode: int, shared: bool) -> None:
        """Give an open file or folder exactly `mode`, and the group if it is shared."""
        if shared and self.gid is not None:
            os.fchown(fd, -1, self.gid)
        os.fchmod(fd, mode)

    def new_file(
        self,
        name: str | Path,
        flags: int,
        shared: bool,
        *,
        read_only: bool = False,
        dir_fd: int | None = None,
    ) -> int:
        """os.open(name, flags | O_CREAT) with the file's mode (and group) set; the fd."""
        mode = self.file(shared, read_only)
        fd = os.open(name, flags | os.O_CREAT, mode, dir_fd=dir_fd)
        try:
            self.set_fd(fd, mode, shared)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def mkdir(self, name: str | Path, shared: bool, dir_fd: int | None = None) -> None:
        """A new folder (FileExistsError if it is there), with its mode (and group), whose
        name survives power loss (its parent is fsynced, or nothing later fsynced inside it
        would: seen under tests/powerloss)."""
        os.mkdir(name, self.dir(shared), dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            self.set_fd(fd, self.dir(shared), shared)
        finally:
            os.close(fd)
        parent = os.open(Path(name).parent, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            with contextlib.suppress(OSError):  # some file systems refuse fsync on folders
                os.fsync(parent)
        finally:
            os.close(parent)

    def folder(self, path: Path, shared: bool) -> str | None:
        """Make `path` (and any missing parent, alike) with its mode, or set the mode of a
        folder that has another (an older install's); what was changed, for a log line."""
        if not path.is_dir():
            if not path.parent.is_dir():
                self.folder(path.parent, shared)
            try:
                self.mkdir(path, shared)
                self.made.add(path)
                return None
            except FileExistsError:
                pass  # made meanwhile (another process on the same root)
        changed = self.tighten(path, self.dir(shared), shared, directory=True)
        return None if path in self.made else changed

    def root(self, root: Path) -> None:
        """The storage root and its tmp/, which the way to shared folders goes through."""
        try:
            changed = [self.folder(root, shared=True), self.folder(root / "tmp", shared=True)]
        except PermissionError as exc:
            if self.gid is None:
                raise
            raise InvalidArgument(
                f"--share-group {self.gid}: cannot give {root} to that group ({exc.strerror}); "
                "the server's user must be a member of it"
            ) from None
        report(changed, f"the storage root {root}")

    def tighten(
        self, path: Path, mode: int, shared: bool, *, directory: bool = False
    ) -> str | None:
        """Give an existing folder (`directory`) or regular file `mode` (and the group);
        what changed, if anything. Anything else there (a file where a folder belongs, a
        device such as /dev/null given as the database) is refused untouched: OSError."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags | (os.O_DIRECTORY if directory else 0))
        try:
            st = os.fstat(fd)
            if not directory and not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            group = shared and self.gid is not None and st.st_gid != self.gid
            if stat.S_IMODE(st.st_mode) == mode and not group:
                return None
            if st.st_uid != os.geteuid() and os.geteuid() != 0:
                log.warning(
                    "%s has mode %o, not %o, and is not this user's to change",
                    path,
                    stat.S_IMODE(st.st_mode),
                    mode,
                )
                return None
            self.set_fd(fd, mode, shared)
        finally:
            os.close(fd)
        return f"{path} (from {stat.S_IMODE(st.st_mode):o} to {mode:o})"


def report(changed: list[str | None], what: str) -> None:
    """One log line for the modes start-up set on what an older install (or a run with
    another --share-group) left."""
    done = [c for c in changed if c]
    if done:
        log.info(
            "changed the modes of %s to this server's (owner-only, group-readable where "
            "--share-group shares): %s",
            what,
            ", ".join(done),
        )
