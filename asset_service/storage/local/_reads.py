"""Reading and checking stored files: batched, block-checked preads; bounded folder fds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path

from asset_service.domain.errors import (
    AssetError,
    CorruptBytes,
    IntegrityError,
    NotFound,
    Unverified,
)
from asset_service.domain.models import BlockSums
from asset_service.storage import blocks, fs

# What one thread hop of a download reads (in chunk_size pieces): memory per reader, held
# while its client does not read, so one chunk (four saved ~0.1 ms of CPU per MiB).
READ_BATCH_BYTES = 1024 * 1024
# How far ahead of a download the kernel is asked to read (posix_fadvise WILLNEED, into the
# page cache, not into the process): the disk stays busy with big requests while the wire
# carries 1 MiB chunks, and a reader that stalls holds no more memory of its own.
READ_AHEAD_BYTES = 16 * 1024 * 1024


class ReadAhead:
    """Tells the kernel what a sequential read of [offset, end) of `fd` will want next."""

    def __init__(self, fd: int, offset: int, end: int) -> None:
        self._fd = fd
        self._end = end
        self._asked = offset  # bytes before this have been asked for
        # A hint only (the read goes on without it): Linux doubles the file's read-ahead
        # window (a syscall that only sets a flag: cheap on the event loop).
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, end - offset, os.POSIX_FADV_SEQUENTIAL)

    def before(self, offset: int) -> None:
        """Called before reading at `offset`: keep READ_AHEAD_BYTES asked for beyond it,
        in half-window steps (one call per 8 MiB; each is cheap where pages are cached)."""
        if self._asked >= self._end or self._asked - offset >= READ_AHEAD_BYTES // 2:
            return
        start = max(self._asked, offset)
        stop = min(self._end, offset + READ_AHEAD_BYTES)
        with contextlib.suppress(OSError):
            os.posix_fadvise(self._fd, start, stop - start, os.POSIX_FADV_WILLNEED)
        self._asked = stop


def pread_batch(
    fd: int, offset: int, end: int, chunk_size: int, ahead: ReadAhead | None = None
) -> list[bytes]:
    """Chunks from `offset` up to READ_BATCH_BYTES (at least one chunk); stops early at EOF."""
    if ahead is not None:
        ahead.before(offset)
    stop = min(end, offset + max(chunk_size, READ_BATCH_BYTES))
    chunks = []
    while offset < stop:
        chunk = os.pread(fd, min(chunk_size, stop - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return chunks


async def read_chunks(
    opened: fs.Opened, storage_path: str, offset: int, end: int, chunk_size: int
) -> AsyncIterator[bytes]:
    try:
        ahead = ReadAhead(opened.fd, offset, end)
        while offset < end:
            # Several chunks per thread hop: one hop per chunk cost as much as the copy.
            batch = await asyncio.to_thread(pread_batch, opened.fd, offset, end, chunk_size, ahead)
            if not batch:
                raise IntegrityError(
                    f"its bytes at {storage_path} ended at {offset} of {end} bytes (truncated "
                    "on disk while being read)"
                )
            for chunk in batch:
                offset += len(chunk)
                yield chunk
    finally:
        opened.close()


def pread_checked(
    fd: int, start: int, stop: int, sums: BlockSums, shown: str, ahead: ReadAhead | None = None
) -> tuple[list[bytes], IntegrityError | None]:
    """Whole blocks from `start` (block-aligned) up to READ_BATCH_BYTES, each checked
    against its sum in this thread (the crc releases the GIL): the good blocks, and the
    error that ends the read at the first bad or missing one."""
    if ahead is not None:
        ahead.before(start)
    block = sums.block_bytes
    limit = min(stop, start + max(block, READ_BATCH_BYTES))
    found: list[bytes] = []
    while start < limit:
        want = min(block, stop - start)
        data = os.pread(fd, want, start)
        while 0 < len(data) < want:  # pread may return less than asked; never at EOF
            more = os.pread(fd, want - len(data), start + len(data))
            if not more:
                break
            data += more
        if len(data) < want:
            return found, IntegrityError(
                f"its bytes at {shown} ended at {start + len(data)} of {stop} bytes (truncated "
                "on disk while being read)"
            )
        try:
            blocks.check_block(sums, shown, start, data)
        except CorruptBytes as exc:
            return found, exc
        found.append(data)
        start += want
    return found, None


async def read_checked(
    opened: fs.Opened,
    storage_path: str,
    offset: int,
    end: int,
    chunk_size: int,
    sums: BlockSums,
) -> AsyncIterator[bytes]:
    """The bytes in [offset, end), read in whole blocks, each checked before any of it is
    yielded; a bad block ends the stream with CorruptBytes naming its offset."""
    try:
        start, stop = blocks.aligned(sums, offset, end, opened.st.st_size)
        ahead = ReadAhead(opened.fd, start, stop)
        while start < stop and offset < end:
            batch, error = await asyncio.to_thread(
                pread_checked, opened.fd, start, stop, sums, storage_path, ahead
            )
            for data in batch:
                for piece in blocks.pieces(data, start, offset, end, chunk_size):
                    yield piece
                start += len(data)
            if error is not None:
                raise error
    finally:
        opened.close()


# check_many keeps at most this many folder fds open at once.
CHECK_FOLDER_FDS = 64


def close_all(fds: dict[tuple[str, ...], int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def not_regular(storage_path: str) -> IntegrityError:
    return IntegrityError(
        f"its bytes at {storage_path} are not a regular file; they are not followed"
    )


def wrong_size(storage_path: str, actual: int, recorded: int) -> IntegrityError:
    return CorruptBytes(
        f"its bytes at {storage_path} are {actual} bytes long; the record says {recorded} "
        "(truncated or replaced on disk)"
    )


# A stored file whose ctime (which no user can set: writing, renaming or linking moves it
# to now) is later than its record's time by more than this was changed after it was
# stored: GetManifest has it read and checked in full before listing it. A legitimate
# late ctime (a moved source unlinked after its record, a move settled by recovery, a
# chmod, clocks of a shared file system apart) costs one such read, never a refusal.
CHANGED_GRACE_SECONDS = 1.0


def check_many_sync(
    root: Path,
    parts_of: Callable[[str], tuple[str, ...]],
    items: Sequence[tuple[str, int]],
    since: Sequence[datetime] | None,
    vouched: dict[str, tuple[int, int, int]],
) -> list[IntegrityError | None]:
    """Like LocalStorage.check() of each, but the folders their paths share
    (uploads/<date>/...) are opened once: each is walked from its parent's fd without
    following symlinks, and each file is lstat-ed in its folder (a symlink there is not a
    regular file).

    With `since` (each record's time), a file changed after it (its ctime, beyond
    CHANGED_GRACE_SECONDS) and not verified since (`vouched`: path -> (dev, ino, ctime))
    is Unverified."""
    found: list[IntegrityError | None] = []
    folders: dict[tuple[str, ...], int] = {}

    def folder(parts: tuple[str, ...]) -> int:
        fd = folders.get(parts)
        if fd is None:
            if len(folders) >= CHECK_FOLDER_FDS:  # never near the fd limit
                close_all(folders)
            parent = os.open(root, fs.DIR_FLAGS) if not parts else folder(parts[:-1])
            fd = parent if not parts else fs.open_dir(parent, parts[-1:], "/".join(parts))
            folders[parts] = fd
        return fd

    def changed(storage_path: str, st: os.stat_result, since: datetime) -> bool:
        if st.st_ctime <= since.timestamp() + CHANGED_GRACE_SECONDS:
            return False
        return vouched.get(storage_path) != (st.st_dev, st.st_ino, st.st_ctime_ns)

    try:
        for index, (storage_path, size_bytes) in enumerate(items):
            parts = parts_of(storage_path)
            try:
                st = os.stat(parts[-1], dir_fd=folder(parts[:-1]), follow_symlinks=False)
            except (FileNotFoundError, NotFound):
                found.append(IntegrityError(f"its bytes at {storage_path} are missing"))
                continue
            except (AssetError, OSError):  # a symlink, or no folder, on the way
                found.append(not_regular(storage_path))
                continue
            if not stat.S_ISREG(st.st_mode):
                found.append(not_regular(storage_path))
            elif st.st_size != size_bytes:
                found.append(wrong_size(storage_path, st.st_size, size_bytes))
            elif since is not None and changed(storage_path, st, since[index]):
                found.append(
                    Unverified(
                        f"its bytes at {storage_path} were changed (ctime) after the record "
                        "pointed at them"
                    )
                )
            else:
                found.append(None)
    finally:
        close_all(folders)
    return found
