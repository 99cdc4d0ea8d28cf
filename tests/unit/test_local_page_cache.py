"""Local storage and the page cache: uploads stay cached for the read after them; reads ask
the kernel ahead (storage/sink.py, storage/local/_reads.py)."""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asset_service.storage import fs
from asset_service.storage.blocks import sums_of
from asset_service.storage.local import LocalStorage, _reads
from asset_service.storage.sink import use_direct_io

MiB = 1 << 20
DAY_KEY = "uploads/2026-01-02/5b0e4f0e-0000-4000-8000-000000000000/x.bin"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_fraction(path: Path) -> float:
    """The share of the file's pages in the page cache (mincore(2) on a mapping that is
    never touched, so asking does not bring any page in)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            pages = -(-size // mmap.PAGESIZE)
            vector = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(v & 1 for v in vector) / pages
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def direct_io_allowed(folder: Path) -> bool:
    fd = os.open(folder / ".probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        return use_direct_io(fd)
    finally:
        os.close(fd)
        (folder / ".probe").unlink()


async def stored(storage: LocalStorage, data: bytes) -> Path:
    await storage.open()
    writer = storage.new_writer()
    for start in range(0, len(data), MiB):
        await writer.write(data[start : start + MiB])
    await writer.seal()
    path = Path(await writer.commit(DAY_KEY))
    await writer.finish()
    await storage.close()
    return path


async def test_an_upload_stays_in_the_page_cache_for_the_read_after_it(tmp_path: Path) -> None:
    """By default the bytes go through the page cache (written back early, fsynced before
    the record) and stay there as clean pages: the next task's read comes from memory."""
    data = os.urandom(16 * MiB)
    path = await stored(LocalStorage(tmp_path / "cached"), data)
    assert cached_fraction(path) > 0.9
    assert path.read_bytes() == data


async def test_with_direct_io_an_upload_bypasses_the_page_cache(tmp_path: Path) -> None:
    if not direct_io_allowed(tmp_path):
        pytest.fail("this test needs a file system with O_DIRECT (the project's machines have it)")
    data = os.urandom(16 * MiB)
    path = await stored(LocalStorage(tmp_path / "direct", direct_io=True), data)
    assert cached_fraction(path) < 0.1
    assert path.read_bytes() == data


class Events:
    """os.pread and os.posix_fadvise calls, in the order they were made (any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, int, int, int]] = []

    def recording(self, kind: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(fd: int, *args: int) -> Any:
            with self.lock:
                if kind == "pread":
                    self.log.append(("pread", args[1], args[0], 0))
                else:
                    self.log.append(("advise", args[0], args[1], args[2]))
            return real(fd, *args)

        return call


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
async def test_a_download_keeps_the_kernel_reading_ahead_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checked: bool
) -> None:
    size = 40 * MiB + 123
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    events = Events()
    monkeypatch.setattr(os, "pread", events.recording("pread", os.pread))
    monkeypatch.setattr(os, "posix_fadvise", events.recording("advise", os.posix_fadvise))
    opened = fs.open_file(tmp_path, ("f.bin",), "f.bin")
    if checked:
        chunks = _reads.read_checked(opened, "f.bin", 0, size, MiB, sums_of(data))
    else:
        chunks = _reads.read_chunks(opened, "f.bin", 0, size, MiB)
    assert b"".join([c async for c in chunks]) == data

    advice = [e for e in events.log if e[0] == "advise"]
    assert advice[0] == ("advise", 0, size, os.POSIX_FADV_SEQUENTIAL)
    asked = [(start, length) for _, start, length, how in advice if how == os.POSIX_FADV_WILLNEED]
    # Whole-file coverage, each byte asked for once, in steps of about half a window.
    assert asked[0][0] == 0
    for (start, length), (following, _) in itertools.pairwise(asked):
        assert following == start + length
    assert sum(length for _, length in asked) == size
    assert all(length <= _reads.READ_AHEAD_BYTES for _, length in asked)
    assert len(asked) <= size // (_reads.READ_AHEAD_BYTES // 2) + 1
    # Before each read, the kernel had been asked for at least half a window past it.
    reach = 0
    for kind, offset, length, how in events.log:
        if kind == "advise" and how == os.POSIX_FADV_WILLNEED:
            reach = offset + length
        elif kind == "pread":
            assert reach >= min(size, offset + _reads.READ_AHEAD_BYTES // 2), offset
