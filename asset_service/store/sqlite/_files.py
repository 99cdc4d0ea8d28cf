"""The SQLite database's files: one process per database, owner-only whatever the umask."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from asset_service.domain.errors import Unavailable
from asset_service.modes import PRIVATE_FILE, Modes, report


def claim(db: Path) -> int:
    """The fd of <db>.lock, flocked: one server per database file (the supervisor of
    several workers holds it for them all: store/sqlite/_shared.py)."""
    lock = db.with_name(db.name + ".lock")
    try:
        if not db.parent.is_dir():
            Modes().folder(db.parent, shared=False)
        fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:  # start-up's one line (exit 2), not a traceback
        raise _unusable(db, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Unavailable(
            f"another asset-service process is using {db}; the embedded SQLite "
            "store serves one server (another's watchers would miss this one's changes). "
            "Stop it, give this one its own --storage-root, or for more processes run one "
            "server with --workers N (or several on MongoDB)."
        ) from None
    return fd


def own_files(db: Path) -> None:
    """The database and its companions owner-only. SQLite makes -wal and -shm with the
    database file's mode (and sets it on them), so that file is made 0600 before SQLite
    opens it; an older install's files are set so at start-up, and said so."""
    modes = Modes()
    names = ("", "-wal", "-shm", ".lock", ".reserve", ".writer", ".sweep")
    companions = [db.with_name(db.name + n) for n in names]
    try:
        # O_NONBLOCK: a FIFO given as the database must not hold start-up (refused below).
        flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        os.close(os.open(db, flags, PRIVATE_FILE))
        changed = [modes.tighten(p, PRIVATE_FILE, False) for p in companions if p.exists()]
    except OSError as exc:  # e.g. a device or a folder given as the database: left alone
        raise _unusable(db, exc) from exc
    report(changed, f"{db}")


def _unusable(db: Path, exc: OSError) -> Unavailable:
    return Unavailable(
        f"cannot use the sqlite database {db}: {exc.strerror}: {exc.filename}; give "
        "--database-url (or ASSET_SERVICE_DATABASE_URL) a regular file in a folder this "
        "user may write"
    )
