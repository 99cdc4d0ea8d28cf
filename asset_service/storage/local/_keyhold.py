"""A commit's hold on its key: flock(2) on the asset's folder, and the file it sets aside."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from asset_service.domain.errors import AssetError, Conflict, Occupied
from asset_service.storage import fs
from asset_service.storage.local._disk import Disk, oserror

log = logging.getLogger(__name__)

BUSY = "the asset's bytes are being committed by another request; retry shortly"


def age_of(st: os.stat_result) -> float:
    """Seconds since the file appeared where it stands, as far as can be told.

    A source hard-linked into place keeps its old mtime; until the move finishes it has a
    second link, and its ctime (moved by link) says when it arrived.
    """
    since = max(st.st_mtime, st.st_ctime) if st.st_nlink > 1 else st.st_mtime
    return time.time() - since


def hold_folder(fd: int, parts: tuple[str, ...]) -> bool | None:
    """flock(2) a key's folder without waiting: True if held, None if a commit (or the
    orphan sweep) holds it, False where the file system has no flock on folders (some
    network file systems: the orphan grace decides there)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    except OSError as exc:
        log.debug("no flock for %s (%s): the orphan grace decides", "/".join(parts), exc)
        return False
    return True


class KeyHold:
    """From before its link(2) until its blob is settled (finish, rollback, abandon), a
    commit holds its asset's folder (one per asset id, so per key) by flock(2), which
    dies with the process. A second live commit of the asset meets Conflict; and since a
    commit links only while holding the folder (others only remove), a file found at the
    name while holding it is no live commit's and stays put: a dead process's half-made
    commit, or a record's bytes. The records decide (Occupied, domain/commits.py), not
    its age. Where the file system has no flock, the orphan grace decides as before.

    An inode lock would not do: a clone, or a retried move of the same server-side file,
    links the very inode a dead commit left, so its lock cannot say whose name it is.
    """

    def __init__(self, disk: Disk) -> None:
        self._disk = disk
        self.parts: tuple[str, ...] = ()  # the key's, once committed
        self._fd: int | None = None  # the folder, flocked (exclusive)
        self.replacing = False  # replace() said no record points at the occupant
        self._aside: Path | None = None  # the occupant, set aside until settled

    def link_new(
        self,
        src: str,
        name: str,
        src_dir: int | None,
        folder: int,
        replace: Callable[[], Awaitable[str]],
    ) -> None:
        """link(2) that never overwrites what a live commit or a record may own: the first
        file met at the name raises Occupied (its `replace`: commit again once no record
        points at it); then it is set aside (rollback puts it back) and the link made again."""
        locked = self._claim(folder)
        for attempt in (1, 2):
            try:
                os.link(src, name, src_dir_fd=src_dir, dst_dir_fd=folder, follow_symlinks=False)
                return
            except FileExistsError:
                pass
            except OSError as exc:
                raise oserror(exc, "committing bytes") from None
            if attempt == 2:
                raise Conflict(BUSY)
            if not locked:
                self._replace_if_old(name, folder)
            elif not self.replacing:
                raise Occupied(BUSY, str(self._disk.root.joinpath(*self.parts)), replace)
            else:
                self._set_aside(name, folder)

    def _claim(self, folder: int) -> bool:
        """Hold the asset's folder; False where the file system has no flock."""
        if self._fd is not None:  # held since the commit that raised Occupied
            held, now = os.fstat(self._fd), os.fstat(folder)
            if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                raise Conflict(BUSY)  # the folder was removed and made again meanwhile
            return True
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder)
        locked = hold_folder(fd, self.parts)
        if not locked:
            os.close(fd)
            if locked is None:
                raise Conflict(BUSY)
            return False
        self._fd = fd
        return True

    def _replace_if_old(self, name: str, folder: int) -> None:
        age = age_of(os.stat(name, dir_fd=folder, follow_symlinks=False))
        if age < self._disk.orphan_grace_seconds:
            raise Conflict(BUSY)
        log.warning("replacing a file left %.0fs ago by an interrupted commit", age)
        os.unlink(name, dir_fd=folder)

    def _set_aside(self, name: str, folder: int) -> None:
        """Move the occupant (no record points at it) into staging: finish() removes it,
        rollback() puts it back. On MongoDB a dead process's record write may still land
        and point at it (docs/mongodb.md, the orphan sweep); then this commit's own write
        (conditional, like the dead one's) fails, and the rollback gives the bytes back.
        Abandoned (outcome unknown), it stays in staging and goes with it."""
        aside = self._disk.staging / f"aside-{uuid.uuid4().hex}"
        try:
            os.rename(name, aside, src_dir_fd=folder)
        except FileNotFoundError:
            return  # removed meanwhile (the orphan sweep): the name is free
        except OSError as exc:
            raise oserror(exc, "setting aside an interrupted commit") from None
        self._aside = aside
        log.warning("set aside %s, left by a dead process's commit", "/".join(self.parts))

    def put_back(self) -> None:
        """On rollback, once its own bytes are gone: the name gets the occupant back.
        Still holding the folder, nothing can have been linked there meanwhile."""
        aside, self._aside = self._aside, None
        if aside is None:
            return
        try:
            folder = self._disk.open_folder(self.parts[:-1], create=True)
            try:
                os.link(aside, self.parts[-1], dst_dir_fd=folder)
                fs.fsync_dir(folder)
            finally:
                os.close(folder)
        except (OSError, AssetError) as exc:
            log.error("could not put back %s, set aside: %s", "/".join(self.parts), exc)
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()

    def drop_aside(self) -> None:
        """On finish: the record points at the new bytes; the occupant goes."""
        aside, self._aside = self._aside, None
        if aside is not None:
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the flock goes with it
            self._fd = None
