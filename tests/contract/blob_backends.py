"""Backends for the BlobStorage contract: local disk and memory; one more entry adds another."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asset_service.domain.ports import BlobStorage
from asset_service.storage.imports import ImportRoots
from asset_service.storage.local import LocalStorage
from asset_service.storage.memory import PREFIX, MemoryState, MemoryStorage
from asset_service.storage.memory._state import StoredBytes
from asset_service.storage.s3 import S3Storage
from asset_service.storage.s3._config import PART_SIZE
from tests.backends import MinIO, minio_missing
from tests.contract import s3_helpers

# Short enough to say "younger than the grace", long enough that no test run crosses it.
GRACE_SECONDS = 60.0


@dataclass
class BlobBackend:
    """One BlobStorage implementation and what a test must do around it.

    `make(imports)` builds a new instance over the same stored state: a second server, or the
    next process after one was closed. The callables reach past the port, as an operator
    would, to set up server-side files and to observe what the port does not show.
    """

    name: str
    make: Callable[[bool], BlobStorage]
    source_path: Callable[[str], str]  # the path a server-side file `name` has (or would have)
    put_source: Callable[[str, bytes], str]  # create that file; its path
    source: Callable[[str], bytes | None]  # a server-side file's bytes, None once gone
    backdate: Callable[[str, float], Awaitable[None]]  # stored bytes at a path, made older
    staged: Callable[[], Awaitable[int]]  # how many staged (uncommitted) blobs exist, any instance
    # Other bytes written over stored ones, behind the storage's back (a flipped bit, a
    # same-size replacement): in place on disk, a new object in a bucket.
    overwrite: Callable[[str, bytes], Awaitable[None]]
    # Files, objects and multipart uploads that resumable upload sessions keep, any instance.
    session_leftovers: Callable[[], Awaitable[list[str]]]
    # What a cut stream keeps: a multiple of this (an object store's part; 1: every byte).
    durable_unit: int = 1
    # Live commits hold their key (flock): bytes no live commit holds are Occupied whatever
    # their age, for the caller to replace once no record points at them. Otherwise only
    # the orphan grace tells a crash leftover from a commit in flight.
    holds_commits: bool = False
    opened: list[BlobStorage] = field(default_factory=list)

    async def start(self, imports: bool = True) -> BlobStorage:
        storage = self.make(imports)
        await storage.open()
        self.opened.append(storage)
        return storage


def _writer(incoming: Path) -> Callable[[str, bytes], str]:
    """put_source for backends whose server-side files are real files under `incoming`."""

    def put_source(name: str, data: bytes) -> str:
        (incoming / name).write_bytes(data)
        return str(incoming / name)

    return put_source


def _file(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def _local(tmp: Path, request: pytest.FixtureRequest) -> BlobBackend:
    root, incoming = tmp / "storage", tmp / "incoming"
    incoming.mkdir()  # on the storage's file system: moves are hard links, the subtle case

    def make(imports: bool) -> BlobStorage:
        roots = ImportRoots([incoming]) if imports else None
        return LocalStorage(root, orphan_grace_seconds=GRACE_SECONDS, imports=roots)

    async def backdate(storage_path: str, seconds: float) -> None:
        st = os.stat(storage_path)
        os.utime(storage_path, (st.st_atime - seconds, st.st_mtime - seconds))

    async def staged() -> int:
        # tmp/staging/<instance>/<blob>, beside each instance's .lock and intents/.
        area = root / "tmp" / "staging"
        return sum(1 for p in area.glob("*/*") if p.is_file() and p.name != ".lock")

    async def overwrite(storage_path: str, data: bytes) -> None:
        fd = os.open(storage_path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    async def sessions() -> list[str]:
        # Files, and folders left empty.
        area = root / "tmp" / "uploads"
        found = [p for p in area.rglob("*") if p.is_file() or not any(p.iterdir())]
        return sorted(str(p.relative_to(area)) for p in found)

    return BlobBackend(
        "local",
        make,
        lambda n: str(incoming / n),
        _writer(incoming),
        _file,
        backdate,
        staged,
        overwrite,
        sessions,
        holds_commits=True,
    )


def _memory(tmp: Path, request: pytest.FixtureRequest) -> BlobBackend:
    state, files = MemoryState(), dict[str, bytes]()
    now = 1_000_000.0  # a clock that stands still: ages change only by backdate()

    def make(imports: bool) -> BlobStorage:
        return MemoryStorage(state, files if imports else None, GRACE_SECONDS, clock=lambda: now)

    def put_source(name: str, data: bytes) -> str:
        files[f"/incoming/{name}"] = data
        return f"/incoming/{name}"

    async def backdate(storage_path: str, seconds: float) -> None:
        state.objects[storage_path.removeprefix(PREFIX)].placed_at -= seconds

    async def staged() -> int:
        return sum(len(area.staging) for area in state.areas.values())

    async def overwrite(storage_path: str, data: bytes) -> None:
        key = storage_path.removeprefix(PREFIX)
        state.objects[key] = StoredBytes(data, state.objects[key].placed_at)

    async def sessions() -> list[str]:
        return sorted(state.sessions)

    return BlobBackend(
        "memory",
        make,
        lambda n: f"/incoming/{n}",
        put_source,
        files.get,
        backdate,
        staged,
        overwrite,
        sessions,
    )


def _s3(tmp: Path, request: pytest.FixtureRequest) -> BlobBackend:
    """S3Storage on the session's MinIO, under a fresh prefix per test."""
    minio: MinIO = request.getfixturevalue("minio")
    state, incoming = tmp / "s3-state", tmp / "incoming"
    incoming.mkdir()
    prefix = f"{uuid.uuid4().hex}/"
    opened: list[S3Storage] = []

    def make(imports: bool) -> BlobStorage:
        roots = ImportRoots([incoming]) if imports else None
        url = f"s3://{s3_helpers.BUCKET}/{prefix}"
        storage = S3Storage(url, state, GRACE_SECONDS, roots, **s3_helpers.credentials(minio))
        opened.append(storage)
        return storage

    async def backdate(storage_path: str, seconds: float) -> None:
        await s3_helpers.backdate(minio, storage_path, seconds)

    async def staged() -> int:
        for storage in opened:
            await storage.drain()  # discard() cleans up in the background
        return await s3_helpers.staged(minio, prefix)

    async def overwrite(storage_path: str, data: bytes) -> None:
        await s3_helpers.overwrite(minio, storage_path, data)

    async def sessions() -> list[str]:
        for storage in opened:
            await storage.drain()
        return await s3_helpers.session_leftovers(minio, prefix)

    return BlobBackend(
        "s3",
        make,
        lambda n: str(incoming / n),
        _writer(incoming),
        _file,
        backdate,
        staged,
        overwrite,
        sessions,
        durable_unit=PART_SIZE,
    )


# name -> builder. A backend that needs a service (an object store) takes it from a session
# fixture through `request`, and says in `missing_blob_backends` why it cannot run here.
BUILDERS: dict[str, Callable[[Path, pytest.FixtureRequest], BlobBackend]] = {
    "local": _local,
    "memory": _memory,
    "s3": _s3,
}


def missing_blob_backends() -> dict[str, str]:
    """Blob backends that will not run here, with the reason."""
    why = minio_missing()
    return {"s3": f"S3Storage on MinIO: {why}"} if why else {}


def blob_report_lines() -> list[str]:
    missing = missing_blob_backends()
    ran = [name for name in BUILDERS if name not in missing]
    lines = [f"blob storage backends under test: {', '.join(ran)}"]
    return lines + [f"  NOT run against {name}: {why}" for name, why in missing.items()]


def blob_backend_names() -> list[str]:
    """Every backend: the cases of one that cannot run here are deselected and counted
    (tests/left_out.py), never skipped."""
    return list(BUILDERS)


@contextlib.asynccontextmanager
async def blob_backend(
    name: str, tmp: Path, request: pytest.FixtureRequest
) -> AsyncIterator[BlobBackend]:
    """A backend on empty state; every instance it started is closed on exit."""
    backend = BUILDERS[name](tmp, request)
    try:
        yield backend
    finally:
        for storage in backend.opened:
            await storage.close()
