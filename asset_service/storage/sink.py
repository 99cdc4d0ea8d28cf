"""One thread per upload that hashes and writes its chunks, fed through a bounded queue."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import hashlib
import os
import threading

from asset_service.storage import fs

# Bytes accepted but not yet written, per upload, before write() makes the caller wait (the
# RPC then stops reading its stream, and HTTP/2 flow control stops the client). A few 1 MiB
# chunks keep the disk busy while the event loop receives the next ones.
QUEUE_BYTES = 4 * 1024 * 1024
# Every this many bytes written, the kernel is asked to start writing them to disk
# (sync_file_range(2), SYNC_FILE_RANGE_WRITE: it does not wait), so that seal()'s fsync
# finds most of a big upload on disk already instead of writing all of it at the end.
WRITEBACK_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE = fs.libc_function(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)


class FileSink:
    """Hashes and writes chunks to `fd` on its own thread; the event loop never waits per chunk.

    write() only queues a chunk, and waits only while QUEUE_BYTES are queued; an OSError of
    the thread is raised by the next write() or by seal(). seal() fsyncs and joins; abort()
    stops the thread without waiting for it. The thread alone closes `fd`.
    """

    def __init__(self, fd: int, queue_bytes: int = QUEUE_BYTES, name: str = "upload") -> None:
        self._fd = fd
        self._limit = queue_bytes
        self._hash = hashlib.sha256()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # the thread waits for chunks here
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0  # bytes accepted and not yet written (the chunk in hand included)
        self._sealing = False
        self._aborted = False
        self._error: OSError | None = None
        # (loop, future) of a write() waiting for room; the thread completes it.
        self._room: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def write(self, chunk: bytes) -> None:
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
        written = flushed = 0
        try:
            while (chunk := self._next()) is not None:
                try:
                    # Both release the GIL on large buffers: the event loop keeps receiving.
                    self._hash.update(chunk)
                    _write_all(self._fd, chunk)
                except OSError as exc:
                    self._fail(exc)
                    return
                written += len(chunk)
                if written - flushed >= WRITEBACK_BYTES and _SYNC_FILE_RANGE is not None:
                    # A hint only: errors surface (if at all) at the fsync in seal().
                    _SYNC_FILE_RANGE(self._fd, flushed, written - flushed, _SYNC_FILE_RANGE_WRITE)
                    flushed = written
                self._written(len(chunk))
            if self._sealing and not self._aborted:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self._fail(exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _next(self) -> bytes | None:
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


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]
