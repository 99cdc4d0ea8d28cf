"""A local cache of FILE assets' bytes, named by sha256, shared by one user's processes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "ASSET_SERVICE_CACHE_DIR"
CACHE_MAX_BYTES_ENV = "ASSET_SERVICE_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 10 * 1024**3
_SHA256 = re.compile(r"[0-9a-f]{64}")
# How often a process waiting for another one's download of the same blob looks again.
LOCK_POLL_SECONDS = 0.05
# A download's temporary file this old was left by a process that died: removed.
STALE_PART_SECONDS = 86400.0


def default_cache_dir() -> Path:
    """$ASSET_SERVICE_CACHE_DIR, else $XDG_CACHE_HOME/asset-service, else ~/.cache/asset-service."""
    if explicit := os.environ.get(CACHE_DIR_ENV):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "asset-service"


def default_max_bytes() -> int:
    raw = os.environ.get(CACHE_MAX_BYTES_ENV)
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{CACHE_MAX_BYTES_ENV}={raw!r}: expected a number of bytes") from None
    if value <= 0:
        raise ValueError(f"{CACHE_MAX_BYTES_ENV}={raw!r}: must be above 0")
    return value


class BlobCache:
    """<root>/blobs/<sha256>: each content once, read-only, verified before it got its name.

    A blob appears only by a rename of a download whose size and sha256 matched the record,
    so a name is a promise about the bytes. Processes share the cache safely: a per-blob
    flock (<root>/locks/<sha256>) makes a second process wait for the first one's download
    instead of downloading again, and eviction skips a blob whose lock is held. Manifests
    never point into the cache: they get a hard link (or a copy across file systems), so
    evicting a blob cannot break a manifest handed out. Past `max_bytes` the least recently
    used blobs go (the mtime, touched on each use, is the clock).
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be above 0, not {max_bytes}")
        self.root = Path(root).absolute()
        self.blobs = self.root / "blobs"
        self.locks = self.root / "locks"
        self.max_bytes = max_bytes

    @classmethod
    def open(
        cls, root: str | os.PathLike[str] | None = None, max_bytes: int | None = None
    ) -> BlobCache:
        """The cache at `root` (default: default_cache_dir()), its folders made owner-only."""
        cache = cls(
            default_cache_dir() if root is None else root,
            default_max_bytes() if max_bytes is None else max_bytes,
        )
        for folder in (cache.root, cache.blobs, cache.locks):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cache

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a sha256 in hex: {sha256!r}")
        return self.blobs / sha256

    def lookup(self, sha256: str, size: int) -> Path | None:
        """The blob if it is here (a regular file of that size), marked as just used."""
        path = self.path(sha256)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            log.warning("cache: %s is not a %d-byte file; downloading it again", path, size)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return path

    def try_lock(self, sha256: str) -> int | None:
        """The blob's lock, held (an fd to give to unlock), or None if another holds it."""
        fd = os.open(
            self.locks / sha256, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        os.close(fd)  # closing the last fd of the open file releases its flock

    def settle(self, sha256: str) -> Path:
        """A blob just downloaded under its name: read-only from now on, its name durable."""
        path = self.path(sha256)
        os.chmod(path, 0o400)
        _fsync_dir(self.blobs)
        return path

    def place(self, sha256: str, dest: Path) -> None:
        """`dest` (replaced if it exists) becomes a hard link to the blob, or a copy of it
        where a link cannot be made (another file system); call with the blob's lock held."""
        blob = self.path(sha256)
        part = dest.with_name(f".{dest.name}.part")
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        try:
            os.link(blob, part)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(blob, part)
            os.chmod(part, 0o400)
        os.replace(part, dest)

    def evict(self, keep: str) -> int:
        """Remove least recently used blobs (not `keep`, none in use) down to max_bytes."""
        entries = []
        stale = time.time() - STALE_PART_SECONDS
        with os.scandir(self.blobs) as it:
            for entry in it:
                if entry.name.endswith(".part"):
                    _remove_if_older(entry, stale)  # a download whose process died
                    continue
                if not _SHA256.fullmatch(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((st.st_mtime, st.st_size, entry.name))
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, name in sorted(entries):
            if total <= self.max_bytes:
                break
            if name == keep or (fd := self.try_lock(name)) is None:
                continue
            try:
                with contextlib.suppress(FileNotFoundError):
                    (self.blobs / name).unlink()
                total -= size
                removed += 1
            finally:
                self.unlock(fd)
        if removed:
            log.info("cache: evicted %d blob(s) to stay under %d bytes", removed, self.max_bytes)
        return removed


def _remove_if_older(entry: os.DirEntry[str], cutoff: float) -> None:
    with contextlib.suppress(FileNotFoundError):
        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
            os.unlink(entry.path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
