"""One thread per upload that hashes its chunks and writes them, with early writeback."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable

from asset_service.domain.models import BlockSums
from asset_service.domain.ports import Chunk
from asset_service.storage import fs
from asset_service.storage.blocks import BlockSummer, Digests

# Bytes accepted but not yet taken by the upload's thread before write() makes the caller
# wait (the RPC then stops reading its stream, and HTTP/2 flow control stops the client). A
# few 1 MiB chunks keep the disk busy while the event loop receives the next ones.
QUEUE_BYTES = 4 * 1024 * 1024

# Through the page cache (the default): every WRITEBACK_BYTES written, the kernel is asked
# to start writing that range to the disk (sync_file_range(2), SYNC_FILE_RANGE_WRITE) and to
# finish the range before it (WAIT_BEFORE|WRITE|WAIT_AFTER). So the disk is busy while the
# upload streams, at most two windows of an upload are dirty or in flight (a slow disk holds
# the upload back, as direct I/O would, instead of piling up dirty pages that throttle every
# writer or make a manifest's syncfs(2) wait), seal()'s fsync finds nearly all of it on disk,
# and the bytes stay in the page cache as clean pages: a read right after the upload (the next
# task of a pipeline) comes from memory, and the kernel can drop them at no cost (no
# writeback) whenever it wants the memory. bench/README.md has the measurements.
WRITEBACK_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4
_SYNC_FILE_RANGE_FINISH = (
    _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
)
_SYNC_FILE_RANGE = fs.libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)

# Direct I/O (O_DIRECT, --direct-io): the bytes go from a page-aligned buffer to the disk,
# bypassing the page cache. That saves the kernel's copy into the cache and takes no fresh
# page-cache pages (on a VM that returns freed memory to its host, such pages cost a host
# fault on first touch), but a file read right after its upload comes from the disk.
# Hashing and copying (one thread) overlap the writes (a second one); the final fsync finds
# no dirty data. Where the file system refuses O_DIRECT, writes go through the cache.
DIRECT_BLOCK = 1024 * 1024  # one buffer; 2 per upload (measured: 1 MiB x 2 beat 2 and 4 MiB)
DIRECT_BUFFERS = 2
# Offsets and lengths of direct writes are multiples of this (the page size: every common
# device's logical block is 512 or 4096 bytes). A file system that wants more answers
# EINVAL, and the upload goes on through the page cache.
DIRECT_ALIGN = 4096
# Freed buffers kept for the next uploads (memory stays mapped and warm).
POOL_KEEP = 8

_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class _Pool:
    """Page-aligned buffers (anonymous mappings) shared by every upload of the process."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, DIRECT_BLOCK)

    def give(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self._keep:
                self._free.append(buffer)
                return
        buffer.close()


_POOL = _Pool(POOL_KEEP)


def use_direct_io(fd: int) -> bool:
    """Turn on O_DIRECT for `fd`; False (and the fd unchanged) where it is not allowed."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False  # EINVAL: the file system does not do direct I/O
    return True


def _buffered(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)


class _Direct:
    """The disk side of a sink with O_DIRECT: chunks are copied into aligned buffers, which
    a second thread writes while the sink's thread hashes and copies the next chunks.

    At most DIRECT_BUFFERS buffers per upload: when both are full or being written, add()
    waits, so the sink stops taking chunks and back-pressure reaches the client. Used only
    from the sink's thread; close() always ends the writer thread and gives the buffers back.
    """

    def __init__(self, fd: int, name: str, start: int = 0) -> None:
        self._fd = fd
        self._name = name
        self._direct = True
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        self._owned = [_POOL.take() for _ in range(DIRECT_BUFFERS)]
        for buffer in self._owned[1:]:
            self._free.put(buffer)
        self._current = self._owned[0]
        self._filled = 0  # bytes in the current buffer
        self._offset = start  # file offset of the current buffer
        self._error: OSError | None = None
        self._dropping = False  # closing without finish(): queued buffers are not written
        self._thread: threading.Thread | None = None  # started with the first full buffer

    def add(self, chunk: Chunk) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            room = DIRECT_BLOCK - self._filled
            piece = view[:room]
            self._current[self._filled : self._filled + len(piece)] = piece
            self._filled += len(piece)
            view = view[len(piece) :]
            if self._filled == DIRECT_BLOCK:
                self._submit()

    def _submit(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_loop, name=f"sink-{self._name}-direct", daemon=True
            )
            self._thread.start()
        self._full.put((self._current, self._offset, self._filled))
        self._offset += self._filled
        self._current, self._filled = self._free.get(), 0  # waits while both are in use
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, offset, size = item
            if self._error is None and not self._dropping:
                try:
                    self._write(memoryview(buffer)[:size], offset)
                except OSError as exc:
                    self._error = exc
            self._free.put(buffer)

    def _write(self, data: memoryview, offset: int) -> None:
        try:
            _pwrite_all(self._fd, data, offset)
        except OSError as exc:
            # A file system that wants other alignment, or a short direct write that left
            # an unaligned rest: the remaining bytes go through the page cache.
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            self._go_buffered()
            _pwrite_all(self._fd, data, offset)

    def _go_buffered(self) -> None:
        """Clear O_DIRECT: the rest of the file goes through the page cache."""
        if self._direct:
            self._direct = False
            _buffered(self._fd)

    def finish(self) -> None:
        """Write what is left: its aligned part directly, the rest through the page cache."""
        self._stop_writer()
        self._raise()
        data = memoryview(self._current)[: self._filled]
        head = self._filled - self._filled % DIRECT_ALIGN
        if head:
            self._write(data[:head], self._offset)
        if head < self._filled:
            self._go_buffered()
            _pwrite_all(self._fd, data[head:], self._offset + head)

    def _stop_writer(self) -> None:
        if self._thread is not None:
            self._full.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """End the writer thread (after its current write) and give the buffers back."""
        self._dropping = True
        self._stop_writer()
        for buffer in self._owned:
            _POOL.give(buffer)
        self._owned = []


class FileSink:
    """Hashes (sha256 and block crc32c) and writes chunks to `fd` on its own thread; the
    event loop never waits per chunk.

    write() only queues a chunk, and waits only while QUEUE_BYTES are queued; an OSError of
    the thread is raised by the next write() or by seal(). seal() fsyncs and joins; abort()
    stops the thread without waiting for it. The thread alone closes `fd`. The bytes go
    through the page cache with early writeback, or with `direct` by O_DIRECT where the file
    system allows it.
    """

    def __init__(
        self,
        fd: int,
        queue_bytes: int = QUEUE_BYTES,
        name: str = "upload",
        direct: bool = False,
        *,
        start: int = 0,
        digests: Digests | None = None,
        checkpoint_bytes: int = 0,
        on_durable: Callable[[int], None] | None = None,
    ) -> None:
        self._fd = fd
        self._limit = queue_bytes
        # A resumed upload continues at `start`, its digests over the bytes before it.
        self._start = start
        self._hash = digests.sha if digests is not None else hashlib.sha256()
        # The block checksums reads check, computed from the bytes as they arrive.
        self._blocks = digests.blocks if digests is not None else BlockSummer()
        # Every checkpoint_bytes written, the thread fdatasyncs and calls on_durable(end
        # offset): the file up to there survives a crash (storage/local/_sessions.py).
        self._checkpoint = checkpoint_bytes if on_durable is not None else 0
        self._on_durable = on_durable
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the thread waits for chunks here
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._queued = 0  # bytes accepted and not yet written (the chunk in hand included)
        self._sealing = False
        self._aborted = False
        self._error: OSError | None = None
        # (loop, future) of a write() waiting for room; the thread completes it.
        self._room: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        # Direct writes need aligned offsets, and a checkpoint would have to flush a
        # partly filled buffer: resumed and checkpointed uploads go through the page cache.
        direct = direct and start % DIRECT_ALIGN == 0 and not self._checkpoint
        self._direct = _Direct(fd, name, start) if direct and use_direct_io(fd) else None
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def block_sums(self) -> BlockSums:
        """The block checksums of the bytes written (complete after seal())."""
        return self._blocks.result()

    @property
    def direct(self) -> bool:
        """Whether the bytes are written with direct I/O (the file system allowed it)."""
        return self._direct is not None

    async def write(self, chunk: Chunk) -> None:
        """Queue `chunk`; wait only while the queue is full. Raises the thread's OSError."""
        while True:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self._sealing or self._aborted:
                    raise RuntimeError("write after seal() or abort()")
                if self._queued < self._limit:
                    self._chunks.append(chunk)
                    self._queued += len(chunk)
                    self._ready.notify()
                    return
                loop = asyncio.get_running_loop()
                room = loop.create_future()
                self._room = (loop, room)
            await room

    def digests(self) -> Digests:
        """A copy of the running sha256 and block sums (final once sealed), to continue
        them in a later stream."""
        return Digests.of(self._hash.copy(), self._blocks.copy())

    async def seal(self) -> str:
        """Write what is queued, fsync, stop the thread; the sha256 of all the bytes."""
        with self._lock:
            self._sealing = True
            self._ready.notify()
        await asyncio.to_thread(self._thread.join)
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Drop what is queued and let the thread end after its current write (no waiting)."""
        with self._lock:
            self._aborted = True
            self._chunks.clear()
            self._ready.notify()

    def _run(self) -> None:
        try:
            self._take_all()
            if self._sealing and not self._aborted:
                if self._direct is not None:
                    self._direct.finish()
                os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc)
        finally:
            if self._direct is not None:
                self._direct.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _take_all(self) -> None:
        written, flushed, durable = self._start, self._start, self._start
        finished = self._start  # bytes before this are written back (sync_file_range)
        while (chunk := self._next()) is not None:
            # Hashing releases the GIL on large buffers, as do the copy and the write: the
            # event loop keeps receiving meanwhile.
            self._hash.update(chunk)
            self._blocks.update(chunk)
            if self._direct is not None:
                self._direct.add(chunk)
            else:
                _pwrite_all(self._fd, memoryview(chunk), written)
                end = written + len(chunk)
                if end - flushed >= WRITEBACK_BYTES and _SYNC_FILE_RANGE:
                    # Hints only: errors surface (if at all) at the fsync in seal().
                    _SYNC_FILE_RANGE(self._fd, flushed, end - flushed, _SYNC_FILE_RANGE_WRITE)
                    if flushed > finished:  # the window before this one: on disk now
                        _SYNC_FILE_RANGE(
                            self._fd, finished, flushed - finished, _SYNC_FILE_RANGE_FINISH
                        )
                        finished = flushed
                    flushed = end
            written += len(chunk)
            if self._checkpoint and written - durable >= self._checkpoint:
                assert self._on_durable is not None
                os.fdatasync(self._fd)
                durable = written
                self._on_durable(durable)
            self._written(len(chunk))

    def _next(self) -> Chunk | None:
        with self._lock:
            while not self._chunks and not self._sealing and not self._aborted:
                self._ready.wait()
            if self._aborted or not self._chunks:
                return None
            return self._chunks.popleft()

    def _written(self, size: int) -> None:
        with self._lock:
            self._queued -= size
            if self._queued < self._limit:
                self._wake_writer()

    def _fail(self, exc: OSError) -> None:
        with self._lock:
            self._error = exc
            self._chunks.clear()
            self._wake_writer()

    def _wake_writer(self) -> None:
        """Called with the lock held: complete the future a write() waits on, if any."""
        if self._room is None:
            return
        loop, room = self._room
        self._room = None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_set_done, room)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled write() left it behind
        future.set_result(None)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Every byte of `data` at `offset` (pwrite may write less than asked)."""
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done
