"""The upload pipeline: one thread per upload behind a bounded queue, writing through the page
cache or with direct I/O and a second thread (storage/sink.py)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from asset_service.domain.errors import StorageFull
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import AssetFilter, UploadHeader
from asset_service.storage import sink
from asset_service.storage.local import LocalStorage
from asset_service.storage.sink import FileSink
from asset_service.store.memory import MemoryStore
from tests.managers import running

KiB = 1024
MiB = 1024 * KiB


class SlowDisk:
    """Replaces the sink's write: each write blocks until the test lets it through."""

    def __init__(self, fail_at: int | None = None, exc: OSError | None = None) -> None:
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)
        self.writes = 0
        self.fail_at = fail_at
        self.exc = exc
        self.real = sink._pwrite_all

    def __call__(self, fd: int, data: memoryview, offset: int) -> None:
        self.writes += 1
        self.started.release()
        self.gate.acquire()
        if self.writes == self.fail_at:
            assert self.exc is not None
            raise self.exc
        self.real(fd, data, offset)

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.release()

    async def wait_started(self, n: int) -> None:
        for _ in range(n):
            assert await asyncio.to_thread(self.started.acquire, True, 10), "no write started"


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SlowDisk]]:
    made: list[SlowDisk] = []

    def make(**kwargs: object) -> SlowDisk:
        disk = SlowDisk(**kwargs)  # type: ignore[arg-type]
        monkeypatch.setattr(sink, "_pwrite_all", disk)
        made.append(disk)
        return disk

    yield make
    for disk in made:
        disk.allow(1000)  # never leave a thread blocked behind a failed test


def sink_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("sink-")}


@pytest.fixture
def threads_before() -> set[threading.Thread]:
    """Sink threads of other tests (a writer a test never ended idles until exit)."""
    return sink_threads()


async def sink_threads_left(before: set[threading.Thread]) -> set[threading.Thread]:
    """This test's sink threads still alive after giving ended uploads a moment to unwind."""

    def join() -> None:
        for thread in sink_threads() - before:
            thread.join(10)

    await asyncio.to_thread(join)
    return sink_threads() - before


def staged(storage: LocalStorage) -> list[str]:
    return sorted(p.name for p in storage.staging.iterdir() if p.name not in (".lock", "intents"))


async def test_the_event_loop_keeps_receiving_up_to_the_bound_and_no_further(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk]
) -> None:
    disk = slow_disk()
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    out = FileSink(fd, queue_bytes=4 * KiB, direct=False)
    chunk = b"x" * KiB
    await out.write(chunk)
    await disk.wait_started(1)  # the thread holds chunk 1 in a write that does not return
    for _ in range(3):  # chunks 2-4 fit in the 4 KiB queue (chunk 1 still counts)
        await asyncio.wait_for(out.write(chunk), 10)
    assert out.queued_bytes == 4 * KiB
    fifth = asyncio.create_task(out.write(chunk))
    done, _ = await asyncio.wait({fifth}, timeout=0.2)
    assert not done, "a full queue must make the caller wait (back-pressure)"
    assert out.queued_bytes == 4 * KiB, "nothing past the bound is accepted"
    disk.allow(1)  # chunk 1 written: room for exactly one more
    await asyncio.wait_for(fifth, 10)
    assert out.queued_bytes <= 4 * KiB
    disk.allow(4)
    digest = await asyncio.wait_for(out.seal(), 10)
    assert digest == hashlib.sha256(chunk * 5).hexdigest()
    assert target.read_bytes() == chunk * 5
    assert not out.alive


async def test_the_writer_does_not_wait_for_each_write(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk]
) -> None:
    """A handler pulling messages keeps going while the disk is busy with an earlier chunk."""
    disk = slow_disk()
    storage = LocalStorage(tmp_path, direct_io=False)
    await storage.open()
    writer = storage.new_writer()
    pulled = 0
    chunk = b"y" * (256 * KiB)

    async def upload() -> None:
        nonlocal pulled
        for _ in range(64):
            pulled += 1
            await writer.write(chunk)

    task = asyncio.create_task(upload())
    await disk.wait_started(1)
    await asyncio.wait({task}, timeout=0.2)
    bound = sink.QUEUE_BYTES // len(chunk)
    # The chunk in the write and the queued ones (QUEUE_BYTES in all), and one waiting.
    assert pulled == bound + 1, f"pulled {pulled} chunks while one write was in progress"
    disk.allow(1000)
    await asyncio.wait_for(task, 10)
    await writer.seal()
    assert writer.size_bytes == 64 * len(chunk)
    assert writer.sha256 == hashlib.sha256(chunk * 64).hexdigest()
    writer.discard()
    await storage.close()


@pytest.fixture(params=[True, False], ids=["direct", "buffered"])
async def manager(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[AssetManager]:
    storage = LocalStorage(tmp_path / "blobs", direct_io=request.param)
    manager = AssetManager(MemoryStore(), storage, Limits())
    async with running(manager):
        yield manager


async def parts(n: int, size: int, pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield bytes([i % 256]) * size


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), StorageFull),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), StorageFull),
        (OSError(errno.EIO, "Input/output error"), OSError),
    ],
)
async def test_a_failed_write_surfaces_as_the_domain_error_and_leaves_nothing(
    manager: AssetManager,
    slow_disk: Callable[..., SlowDisk],
    exc: OSError,
    expected: type[Exception],
    threads_before: set[threading.Thread],
) -> None:
    storage = manager.storage
    assert isinstance(storage, LocalStorage)
    disk = slow_disk(fail_at=3, exc=exc)
    disk.allow(1000)
    with pytest.raises(expected) as raised:
        await manager.upload(UploadHeader(label="big.bin"), parts(40, 64 * KiB))
    if expected is StorageFull:
        assert "storage is full (writing an upload" in str(raised.value)
    else:
        assert raised.value.errno == errno.EIO  # type: ignore[attr-defined]
    assert staged(storage) == [], "the staging file of a failed upload must be removed"
    assert await sink_threads_left(threads_before) == set()
    assert [a async for a in _all(manager)] == []


async def test_a_failed_fsync_fails_the_seal(
    manager: AssetManager,
    monkeypatch: pytest.MonkeyPatch,
    threads_before: set[threading.Thread],
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    storage = manager.storage
    assert isinstance(storage, LocalStorage)
    with pytest.raises(StorageFull):
        await manager.upload(UploadHeader(label="x.bin"), parts(3, KiB))
    assert staged(storage) == []
    assert await sink_threads_left(threads_before) == set()


async def test_one_failing_upload_does_not_fail_its_neighbours(
    manager: AssetManager,
    monkeypatch: pytest.MonkeyPatch,
    threads_before: set[threading.Thread],
) -> None:
    real = sink._pwrite_all
    doomed: set[int] = set()

    def write(fd: int, data: memoryview, offset: int) -> None:
        if data[:1] == b"\xff":  # only the doomed upload sends 0xff bytes
            doomed.add(fd)
        if fd in doomed:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data, offset)

    monkeypatch.setattr(sink, "_pwrite_all", write)

    async def bad() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"\xff" * (64 * KiB)

    good_data = b"".join([p async for p in parts(20, 64 * KiB)])
    results = await asyncio.gather(
        manager.upload(
            UploadHeader(label="good.bin", expected_sha256=hashlib.sha256(good_data).hexdigest()),
            parts(20, 64 * KiB),
        ),
        manager.upload(UploadHeader(label="bad.bin"), bad()),
        return_exceptions=True,
    )
    good, failed = results
    assert isinstance(failed, StorageFull)
    assert not isinstance(good, BaseException)
    assert good.size_bytes == len(good_data)
    chunks = await manager.read(good.id, 0, 0)
    assert b"".join([c async for c in chunks]) == good_data
    assert await sink_threads_left(threads_before) == set()


async def test_a_cancelled_upload_leaves_no_thread_and_no_file(
    manager: AssetManager,
    slow_disk: Callable[..., SlowDisk],
    threads_before: set[threading.Thread],
) -> None:
    storage = manager.storage
    assert isinstance(storage, LocalStorage)
    disk = slow_disk()
    pulled: list[int] = []
    task = asyncio.create_task(
        manager.upload(UploadHeader(label="c.bin"), parts(1000, 256 * KiB, pulled))
    )
    await disk.wait_started(1)
    await asyncio.wait({task}, timeout=0.2)
    # The sink's thread, and with direct I/O its writer thread.
    assert len(sink_threads() - threads_before) == (2 if storage.direct_io else 1)
    assert staged(storage) != []
    held = sink.DIRECT_BUFFERS * sink.DIRECT_BLOCK if storage.direct_io else 0
    bound = (sink.QUEUE_BYTES + held) // (256 * KiB) + 1
    assert len(pulled) <= bound, "back-pressure reached the source"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert staged(storage) == [], "the staging file goes with the cancelled upload"
    disk.allow(1000)  # the write in progress returns; the thread must then end
    assert await sink_threads_left(threads_before) == set()
    assert [a async for a in _all(manager)] == []


async def test_a_big_upload_is_hashed_and_committed_whole(
    manager: AssetManager, threads_before: set[threading.Thread]
) -> None:
    data = b"".join([p async for p in parts(12, 1024 * KiB)])
    asset = await manager.upload(
        UploadHeader(
            label="whole.bin",
            expected_size_bytes=len(data),
            expected_sha256=hashlib.sha256(data).hexdigest(),
        ),
        parts(12, 1024 * KiB),
    )
    assert Path(asset.storage_path).read_bytes() == data
    storage = manager.storage
    assert isinstance(storage, LocalStorage)
    assert staged(storage) == []
    assert await sink_threads_left(threads_before) == set()


async def _all(manager: AssetManager) -> AsyncIterator[str]:
    page = await manager.list_assets(AssetFilter(), 100, "")
    for asset in page.assets:
        yield asset.id


async def test_writeback_is_started_every_few_mib_and_the_bytes_stay_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seal()'s fsync should find most of a big upload on disk already: the sink asks the
    kernel to start writing every WRITEBACK_BYTES, each range once, in order, and waits for
    the window before (so at most two windows of an upload are dirty or in flight)."""
    ranges: list[tuple[int, int, int]] = []
    real = sink._SYNC_FILE_RANGE

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        ranges.append((offset, length, flags))
        return int(real(fd, offset, length, flags)) if real is not None else 0

    monkeypatch.setattr(sink, "_SYNC_FILE_RANGE", recording)
    monkeypatch.setattr(sink, "WRITEBACK_BYTES", 2 * MiB)
    path = tmp_path / "big.bin"
    out = FileSink(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), direct=False)
    data = os.urandom(MiB)
    for _ in range(7):
        await out.write(data)
    digest = await out.seal()
    start, finish = 2, 1 | 2 | 4  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
    assert ranges == [
        (0, 2 * MiB, start),
        (2 * MiB, 2 * MiB, start),
        (0, 2 * MiB, finish),
        (4 * MiB, 2 * MiB, start),
        (2 * MiB, 2 * MiB, finish),
    ]
    assert path.read_bytes() == data * 7
    assert digest == hashlib.sha256(data * 7).hexdigest()


# --- direct I/O ---------------------------------------------------------------------------


def direct_io_allowed(folder: Path) -> bool:
    """Whether the file system of `folder` takes O_DIRECT (ext4, xfs... yes; some tmpfs no)."""
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        return sink.use_direct_io(fd)
    finally:
        os.close(fd)
        (folder / "probe").unlink()


class RecordingWrites:
    """Wraps the sink's write: records (offset, length, whether the fd had O_DIRECT)."""

    def __init__(self, fail_direct_with: int | None = None) -> None:
        self.real = sink._pwrite_all
        self.calls: list[tuple[int, int, bool]] = []
        self.fail_direct_with = fail_direct_with

    def __call__(self, fd: int, data: memoryview, offset: int) -> None:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        self.calls.append((offset, len(data), direct))
        if direct and self.fail_direct_with is not None:
            raise OSError(self.fail_direct_with, os.strerror(self.fail_direct_with))
        self.real(fd, data, offset)


async def sink_bytes(path: Path, data: bytes, chunk: int, **kwargs: object) -> FileSink:
    """A sink with direct I/O (unless told otherwise) fed `data` in `chunk`-sized pieces."""
    kwargs.setdefault("direct", True)
    out = FileSink(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), **kwargs)  # type: ignore[arg-type]
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        await out.write(view[start : start + chunk])
    assert await asyncio.wait_for(out.seal(), 30) == hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, KiB),
        (1, KiB),
        (4095, KiB),
        (4096, 4096),
        (4097, 3000),
        (MiB - 1, 64 * KiB),
        (MiB, MiB),
        (MiB + 1, MiB),
        (3 * MiB + 123, 7 * KiB + 3),  # chunks straddling every buffer boundary
        (5 * MiB + 4096, 3 * MiB // 2),  # chunks bigger than a buffer
    ],
)
async def test_direct_io_writes_every_size_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, chunk: int
) -> None:
    writes = RecordingWrites()
    monkeypatch.setattr(sink, "_pwrite_all", writes)
    data = os.urandom(size)
    path = tmp_path / "out.bin"
    out = await sink_bytes(path, data, chunk)
    assert path.read_bytes() == data
    assert out.direct == direct_io_allowed(tmp_path)
    if out.direct:
        # Whole buffers, then the aligned part of the rest, go directly; only the last
        # partial block goes through the page cache.
        head = size - size % sink.DIRECT_ALIGN
        assert [c for c in writes.calls if c[2]] == [
            (o, min(sink.DIRECT_BLOCK, head - o), True) for o in range(0, head, sink.DIRECT_BLOCK)
        ]
        assert [c for c in writes.calls if not c[2]] == (
            [(head, size - head, False)] if size > head else []
        )
    assert not out.alive


async def test_a_refused_direct_write_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that wants other alignment answers EINVAL: the same bytes are written
    through the page cache and the upload completes whole."""
    allowed = direct_io_allowed(tmp_path)
    if not allowed:
        # Without O_DIRECT here, the sink is made to believe it is on.
        monkeypatch.setattr(sink, "use_direct_io", lambda fd: True)
    writes = RecordingWrites(fail_direct_with=errno.EINVAL)
    monkeypatch.setattr(sink, "_pwrite_all", writes)
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "out.bin"
    await sink_bytes(path, data, 256 * KiB)
    assert path.read_bytes() == data
    assert [c[2] for c in writes.calls].count(True) == int(allowed), "no O_DIRECT after a refusal"
    assert sum(length for _, length, direct in writes.calls if not direct) == len(data)


async def test_direct_io_holds_two_buffers_then_pushes_back(
    tmp_path: Path, slow_disk: Callable[..., SlowDisk]
) -> None:
    """While the disk is stuck, the sink fills its two buffers and the queue, then write()
    waits: memory per upload stays at queue + 2 buffers."""
    if not direct_io_allowed(tmp_path):
        pytest.fail("this test needs a file system with O_DIRECT (the project's machines have it)")
    disk = slow_disk()
    out = FileSink(
        os.open(tmp_path / "out.bin", os.O_WRONLY | os.O_CREAT, 0o600),
        queue_bytes=4 * KiB,
        direct=True,
    )
    chunk = os.urandom(256 * KiB)
    accepted = 0

    async def feed(n: int) -> None:
        nonlocal accepted
        for _ in range(n):
            await out.write(chunk)
            accepted += 1

    task = asyncio.create_task(feed(16))
    await disk.wait_started(1)  # buffer 1 is being written and does not return
    await asyncio.wait({task}, timeout=0.3)
    per_buffer = sink.DIRECT_BLOCK // len(chunk)
    # Buffer 1 (in the write), buffer 2 (full, its last chunk still counted as queued).
    assert accepted == sink.DIRECT_BUFFERS * per_buffer, accepted
    assert not task.done()
    disk.allow(1000)
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(out.seal(), 10)
    assert (tmp_path / "out.bin").read_bytes() == chunk * 16


async def test_a_failed_direct_write_on_the_writer_thread_fails_the_upload(
    tmp_path: Path,
    slow_disk: Callable[..., SlowDisk],
    threads_before: set[threading.Thread],
) -> None:
    storage = LocalStorage(tmp_path / "blobs")
    manager = AssetManager(MemoryStore(), storage, Limits())
    async with running(manager):
        disk = slow_disk(fail_at=1, exc=OSError(errno.ENOSPC, "No space left on device"))
        disk.allow(1000)
        with pytest.raises(StorageFull):
            await manager.upload(UploadHeader(label="full.bin"), parts(64, 256 * KiB))
        assert staged(storage) == []
        assert await sink_threads_left(threads_before) == set()


async def test_buffers_go_back_to_the_pool_whatever_the_ending(tmp_path: Path) -> None:
    sink._POOL.give(sink._POOL.take())  # at least one buffer pooled
    for i in range(3):
        await sink_bytes(tmp_path / f"{i}.bin", os.urandom(2 * MiB + 7), 256 * KiB)
    before = len(sink._POOL._free)
    assert 1 <= before <= sink.POOL_KEEP
    out = FileSink(os.open(tmp_path / "aborted.bin", os.O_WRONLY | os.O_CREAT, 0o600), direct=True)
    await out.write(os.urandom(3 * MiB))
    out.abort()
    await asyncio.to_thread(out._thread.join, 10)
    assert not out.alive
    # It took two (from the pool, or new ones) and gave both back.
    assert len(sink._POOL._free) == min(max(before, sink.DIRECT_BUFFERS), sink.POOL_KEEP)
