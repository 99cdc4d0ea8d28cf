"""Blob storage on a local (or shared) filesystem: staging, atomic commits, crash recovery."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from asset_service.domain.models import parse_asset_id
from asset_service.domain.ports import Chunk
from asset_service.storage import fs, keys
from asset_service.storage.imports import ImportRoots
from asset_service.storage.sink import FileSink

log = logging.getLogger(__name__)

COPY_CHUNK = 1024 * 1024
# What one thread hop of a download reads (in chunk_size pieces): memory per reader.
READ_BATCH_BYTES = 4 * 1024 * 1024


def _age(st: os.stat_result) -> float:
    """Seconds since the file appeared where it stands, as far as can be told.

    A source hard-linked into place keeps its old mtime; until the move finishes it has a
    second link, and its ctime (moved by link) says when it arrived.
    """
    since = max(st.st_mtime, st.st_ctime) if st.st_nlink > 1 else st.st_mtime
    return time.time() - since


def _oserror(exc: OSError, where: str) -> Exception:
    if exc.errno in fs.NO_SPACE:
        return fs.no_space(exc, where)
    return exc


@dataclass(frozen=True)
class Leftover:
    """A move that a dead process left half-done; the record decides which side keeps it."""

    asset_id: str
    storage_path: str
    journal: Path
    intent: dict[str, Any]


class _Blob:
    """Bytes on their way to a key: commit() places them, then finish() or rollback().

    Between commit() and finish() the caller writes the record. If it cannot learn whether
    that write applied, abandon() keeps everything (bytes and any source) for recovery.
    """

    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        self.size_bytes = 0
        self.sha256 = hashlib.sha256().hexdigest()
        self._final: tuple[int, str] | None = None  # (folder fd, name) once committed
        self._final_id: tuple[int, int] | None = None  # (dev, ino) of the committed file
        self._journal: Path | None = None
        self._done = False

    async def commit(self, key: str) -> str:
        parts = self._storage.key_parts(key)
        await asyncio.to_thread(self._commit_sync, parts)
        return str(self._storage.root.joinpath(*parts))

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        raise NotImplementedError

    def _place(
        self, staging: Path, parts: tuple[str, ...], move_source: dict[str, Any] | None
    ) -> None:
        """Link a fsynced staging file to its final name (never clobbering), then drop staging."""
        folder = self._storage.open_folder(parts[:-1], create=True)
        name = parts[-1]
        try:
            st = os.stat(staging)
            if move_source is not None:
                self._journal = self._storage.write_intent(
                    {**move_source, "final": "/".join(parts), "final_ino": st.st_ino}
                )
            self._link_new(str(staging), name, None, folder)
            os.unlink(staging)
            fs.fsync_dir(folder)
        except BaseException:
            os.close(folder)
            raise
        self._final, self._final_id = (folder, name), (st.st_dev, st.st_ino)

    def _link_new(self, src: str, name: str, src_dir: int | None, folder: int) -> None:
        """link(2) that never overwrites; a crash leftover older than the grace is replaced."""
        for attempt in (1, 2):
            try:
                os.link(src, name, src_dir_fd=src_dir, dst_dir_fd=folder, follow_symlinks=False)
                return
            except FileExistsError:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                age = _age(st)
                if attempt == 2 or age < self._storage.orphan_grace_seconds:
                    raise Conflict(
                        "the asset's bytes are being committed by another request; retry shortly"
                    ) from None
                log.warning("replacing a file left %.0fs ago by an interrupted commit", age)
                os.unlink(name, dir_fd=folder)
            except OSError as exc:
                raise _oserror(exc, "committing bytes") from None

    def _drop_final(self) -> None:
        if self._final is not None and self._final_id is not None:
            folder, name = self._final
            fs.unlink_if_same(folder, name, self._final_id)

    def _close(self) -> None:
        if self._final is not None:
            with contextlib.suppress(OSError):
                os.close(self._final[0])
            self._final = None

    def _forget_journal(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(FileNotFoundError):
                self._journal.unlink()
            self._journal = None

    async def finish(self) -> None:
        """The record now points at the bytes: complete the move (if any), release fds."""
        if self._done:
            return
        self._done = True
        try:
            await asyncio.to_thread(self._finish_sync)
        finally:
            self._close()

    def _finish_sync(self) -> None:
        self._forget_journal()

    async def rollback(self) -> None:
        """No record points at the bytes: remove them; a source file stays where it was."""
        self.discard()

    def discard(self) -> None:
        """rollback() without awaiting: plain syscalls, safe while a cancelled RPC unwinds."""
        if self._done:
            return
        self._done = True
        try:
            self._rollback_sync()
        finally:
            self._close()

    def _rollback_sync(self) -> None:
        self._drop_final()
        self._forget_journal()
        if self._final is not None:
            self._storage.prune_empty(self._final[0])

    def abandon(self) -> None:
        """Outcome unknown: keep bytes, source and journal; recovery settles them later."""
        if self._done:
            return
        self._done = True
        self._close()


class _Writer(_Blob):
    """Streams chunks into a staging file through a FileSink (hashed and written on its own
    thread, behind a bounded queue); memory stays flat."""

    def __init__(self, storage: LocalStorage, path: Path) -> None:
        super().__init__(storage)
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise _oserror(exc, "staging an upload") from None
        self._sink = FileSink(fd, name=path.name[:8], direct=storage.direct_io)

    async def write(self, chunk: Chunk) -> None:
        try:
            await self._sink.write(chunk)
        except OSError as exc:
            raise _oserror(exc, "writing an upload") from None
        self.size_bytes += len(chunk)

    async def seal(self) -> None:
        try:
            self.sha256 = await self._sink.seal()
        except OSError as exc:
            raise _oserror(exc, "writing an upload") from None

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        self._place(self.path, parts, None)

    def _rollback_sync(self) -> None:
        # The sink's thread closes the file itself once it sees the abort; the name goes now.
        self._sink.abort()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        super()._rollback_sync()


class _Adopted(_Blob):
    """A server-side file under an import root, held open (and flocked) from hash to finish.

    A move on the storage's file system is a hard link into place, then (after the record)
    the unlink of the source: the worker's file stays at its path until the record commits.
    Otherwise the bytes are copied into staging first. Either way a journal entry written
    before the final name appears lets start-up recovery finish or undo a move.
    """

    def __init__(self, storage: LocalStorage, raw: str, opened: fs.Opened, move: bool) -> None:
        super().__init__(storage)
        self.raw = raw
        self.opened = opened
        self.move = move
        self._staging: Path | None = None  # a copy, when linking is not possible

    def stage(self) -> None:
        st = self.opened.st
        same_fs = st.st_dev == self._storage.device
        if self.move and same_fs and st.st_nlink == 1:
            self.sha256, self.size_bytes = self._hash_source()
        else:
            self._staging = self._storage.staging / uuid.uuid4().hex
            self.sha256, self.size_bytes = self._copy_source(self._staging)
        self._check_unchanged()

    def _hash_source(self) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        for chunk in _pread_chunks(self.opened.fd):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    def _copy_source(self, target: Path) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        try:
            with open(target, "xb") as out:
                for chunk in _pread_chunks(self.opened.fd):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            raise _oserror(exc, "copying a server-side file") from None
        return digest.hexdigest(), size

    def _check_unchanged(self) -> None:
        now, then = os.fstat(self.opened.fd), self.opened.st
        if (now.st_size, now.st_mtime_ns) != (then.st_size, then.st_mtime_ns) or (
            now.st_size != self.size_bytes
        ):
            raise Conflict(
                "the server-side file changed while it was being read; retry once the worker "
                "has finished writing it"
            )

    def _source_intent(self) -> dict[str, Any] | None:
        if not self.move:
            return None
        st = self.opened.st
        return {"source": self.raw, "dev": st.st_dev, "ino": st.st_ino}

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        if self._staging is not None:
            self._place(self._staging, parts, self._source_intent())
            self._staging = None
            return
        folder = self._storage.open_folder(parts[:-1], create=True)
        name = parts[-1]
        st = self.opened.st
        try:
            self._journal = self._storage.write_intent(
                {**(self._source_intent() or {}), "final": "/".join(parts), "final_ino": st.st_ino}
            )
            try:
                self._link_new(self.opened.name, name, self.opened.parent_fd, folder)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._forget_journal()
                os.close(folder)
                folder = -1
                # Same device number, other mount (a bind mount): copy after all.
                self._staging = self._storage.staging / uuid.uuid4().hex
                digest, _ = self._copy_source(self._staging)
                if digest != self.sha256:
                    raise Conflict(
                        "the server-side file changed while it was being adopted"
                    ) from None
                self._commit_sync(parts)
                return
            self._final, self._final_id = (folder, name), (st.st_dev, st.st_ino)
            linked = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if (linked.st_dev, linked.st_ino) != (st.st_dev, st.st_ino):
                # The name was swapped between open and link: never adopt what we did not hash.
                raise Conflict("the server-side file was replaced while being adopted; retry")
            self._check_unchanged()
            fs.fsync_dir(folder)
        except BaseException:
            if self._final is not None:
                self._rollback_sync()
            elif folder >= 0:
                os.close(folder)
            self._forget_journal()
            raise

    def _finish_sync(self) -> None:
        if self.move:
            st = self.opened.st
            if not fs.unlink_if_same(
                self.opened.parent_fd, self.opened.name, (st.st_dev, st.st_ino)
            ):
                log.warning("the moved source %r was already gone or replaced", self.raw)
        super()._finish_sync()

    def _rollback_sync(self) -> None:
        if self._staging is not None:
            with contextlib.suppress(FileNotFoundError):
                self._staging.unlink()
        super()._rollback_sync()

    def _close(self) -> None:
        super()._close()
        self.opened.close()


def _pread_chunks(fd: int) -> Iterator[bytes]:
    offset = 0
    while chunk := os.pread(fd, COPY_CHUNK, offset):
        offset += len(chunk)
        yield chunk


class LocalStorage:
    """uploads/YYYY-MM-DD/<asset-id>/<name>, generated/<task>/<asset-id>/<name>, tmp/."""

    def __init__(
        self,
        root: Path,
        orphan_grace_seconds: float = 600.0,
        imports: ImportRoots | None = None,
        direct_io: bool = True,
    ) -> None:
        self.root = root.resolve()
        # Uploads written with O_DIRECT where the file system allows it (storage/sink.py).
        self.direct_io = direct_io
        # A file in a final location younger than this may be another server's commit.
        self.orphan_grace_seconds = orphan_grace_seconds
        self.imports = imports or ImportRoots(())
        self.uploads = self.root / "uploads"
        self.generated = self.root / "generated"
        self.tmp = self.root / "tmp"
        self._staging_parent = self.tmp / "staging"
        self._instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.staging = self._staging_parent / self._instance
        self.intents = self.staging / "intents"
        self.device = -1
        self._lock_fd: int | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        try:
            for folder in (self.uploads, self.generated, self._staging_parent):
                folder.mkdir(parents=True, exist_ok=True)
            self.staging.mkdir()
            self.intents.mkdir()
            # Held for the life of the process; start-up sweeps of other processes
            # know this staging folder is live because they cannot take the lock.
            self._lock_fd = os.open(self.staging / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.device = os.stat(self.root).st_dev
        except OSError as exc:
            raise Unavailable(f"storage root {self.root} is not usable: {exc}") from exc

    def _dead_staging(self) -> list[Path]:
        dead = []
        for folder in self._staging_parent.iterdir():
            if folder == self.staging or not folder.is_dir() or folder.is_symlink():
                continue
            try:
                fd = os.open(folder / ".lock", os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                finally:
                    os.close(fd)
            dead.append(folder)
        return dead

    async def leftovers(self) -> list[Leftover]:
        """Moves journaled by dead processes, to settle before their staging is removed."""
        return await asyncio.to_thread(self._leftovers_sync)

    def _leftovers_sync(self) -> list[Leftover]:
        found = []
        for folder in self._dead_staging():
            intents = folder / "intents"
            for journal in sorted(intents.glob("*.json")) if intents.is_dir() else ():
                try:
                    intent = json.loads(journal.read_text())
                    parts = self.key_parts(intent["final"])
                    asset_id = parse_asset_id(parts[-2])
                except (OSError, ValueError, KeyError, IndexError, AssetError) as exc:
                    # Journals are fsynced whole before anything is linked, so one that does
                    # not parse (a disk error, a hand edit) was never acted on: drop it.
                    log.error("dropping unreadable move journal %s (%s)", journal, exc)
                    journal.unlink(missing_ok=True)
                    continue
                found.append(Leftover(asset_id, str(self.root.joinpath(*parts)), journal, intent))
        return found

    async def settle(self, leftover: Leftover, committed: bool) -> None:
        """Finish a journaled move whose record committed, or undo one whose record did not."""
        await asyncio.to_thread(self._settle_sync, leftover, committed)

    def _settle_sync(self, leftover: Leftover, committed: bool) -> None:
        intent = leftover.intent
        parts = self.key_parts(intent["final"])
        try:
            folder = self.open_folder(parts[:-1])
        except (OSError, AssetError):
            folder = -1
        try:
            final = None
            if folder >= 0:
                with contextlib.suppress(FileNotFoundError):
                    final = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
            ours = final is not None and (final.st_dev, final.st_ino) == (
                self.device,
                intent["final_ino"],
            )
            if committed and ours:
                if "source" in intent:
                    source = (intent["dev"], intent["ino"])
                    if self.imports.remove_if_same(intent["source"], source):
                        log.warning("finished an interrupted move of %r", intent["source"])
            elif committed:
                log.error(
                    "asset %s is AVAILABLE but its bytes at %s are not the ones journaled; "
                    "leaving the source %r in place",
                    leftover.asset_id,
                    leftover.storage_path,
                    intent.get("source"),
                )
            elif ours and final is not None:
                fs.unlink_if_same(folder, parts[-1], (final.st_dev, final.st_ino))
                log.warning("undid an interrupted move of %r", intent.get("source"))
        finally:
            if folder >= 0:
                os.close(folder)
        leftover.journal.unlink(missing_ok=True)

    async def sweep_dead_staging(self) -> int:
        """Remove staging folders of dead processes (their moves already settled)."""
        return await asyncio.to_thread(self._sweep_dead_staging_sync)

    def _sweep_dead_staging_sync(self) -> int:
        removed = 0
        for folder in self._dead_staging():
            intents = folder / "intents"
            if intents.is_dir() and any(intents.glob("*.json")):
                log.error("staging %s keeps unsettled move journals; not removed", folder)
                continue
            log.warning("removing staging left by a dead process: %s", folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if any(self.intents.glob("*.json")):
            # Moves whose outcome is unknown: the next start-up settles them.
            log.warning("leaving %s for recovery: it holds unsettled moves", self.staging)
            return
        await asyncio.to_thread(shutil.rmtree, self.staging, True)

    # --- keys and paths ---------------------------------------------------------------

    def upload_key(self, asset_id: str, label: str, now: datetime) -> str:
        return keys.upload_key(asset_id, label, now)

    def generated_key(self, task_id: str, asset_id: str, label: str) -> str:
        return keys.generated_key(task_id, asset_id, label)

    def key_parts(self, key: str) -> tuple[str, ...]:
        return keys.key_parts(key)

    def _parts_of(self, storage_path: str) -> tuple[str, ...]:
        path = Path(storage_path)
        if not path.is_absolute() or not path.is_relative_to(self.root):
            raise NotFound(f"{storage_path} is not a path in this storage")
        return self.key_parts(str(path.relative_to(self.root)))

    def open_folder(self, parts: tuple[str, ...], create: bool = False) -> int:
        return fs.open_dir(self.root, parts, "/".join(parts), create=create)

    def prune_empty(self, folder_fd: int) -> None:
        """Remove the now-empty per-asset folder of a rolled-back commit (best effort)."""
        with contextlib.suppress(OSError):
            path = os.readlink(f"/proc/self/fd/{folder_fd}")
            self._prune_empty(Path(path))

    def _prune_empty(self, folder: Path) -> None:
        stops = {self.root, self.uploads, self.generated, self.tmp, self._staging_parent}
        while folder not in stops and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def write_intent(self, intent: dict[str, Any]) -> Path:
        """Durably journal a move before its final name appears (removed once settled).

        Written whole under a temporary name, fsynced, then renamed: a journal entry that
        exists is complete, and one that does not parse cannot have been acted on.
        """
        try:
            return fs.write_journal(self.intents, intent)
        except OSError as exc:
            raise _oserror(exc, "journaling a move") from None

    # --- writing ----------------------------------------------------------------------

    def new_writer(self) -> _Writer:
        return _Writer(self, self.staging / uuid.uuid4().hex)

    async def adopt(self, path: str, move: bool) -> _Adopted:
        """Hash (and, unless it can be linked, copy) a server-side file under an import root."""
        return await asyncio.to_thread(self._adopt_sync, path, move)

    def _adopt_sync(self, path: str, move: bool) -> _Adopted:
        opened = self.imports.open(path, exclusive=move)
        blob = _Adopted(self, path, opened, move)
        try:
            blob.stage()
        except BaseException:
            blob._rollback_sync()
            blob._close()
            raise
        return blob

    # --- reading and housekeeping -----------------------------------------------------

    def _open_stored(self, storage_path: str, size_bytes: int) -> fs.Opened:
        parts = self._parts_of(storage_path)
        try:
            opened = fs.open_file(self.root, parts, storage_path)
        except NotFound:
            raise IntegrityError(f"its bytes at {storage_path} are missing") from None
        except AssetError:  # a symlink or a non-regular file where the bytes should be
            raise _not_regular(storage_path) from None
        if opened.st.st_size != size_bytes:
            opened.close()
            raise _wrong_size(storage_path, opened.st.st_size, size_bytes)
        return opened

    async def read(
        self, storage_path: str, size_bytes: int, offset: int, limit: int, chunk_size: int
    ) -> AsyncIterator[bytes]:
        opened = await asyncio.to_thread(self._open_stored, storage_path, size_bytes)
        end = size_bytes if limit <= 0 else min(size_bytes, offset + limit)
        return _read_chunks(opened, storage_path, offset, end, chunk_size)

    async def check(self, storage_path: str, size_bytes: int) -> None:
        """Raise IntegrityError unless the bytes are there, a regular file of that size."""
        opened = await asyncio.to_thread(self._open_stored, storage_path, size_bytes)
        opened.close()

    async def check_many(self, items: Sequence[tuple[str, int]]) -> Sequence[IntegrityError | None]:
        """check() of each, all in one thread hop (a manifest may name 1000 inputs)."""
        return await asyncio.to_thread(self._check_many_sync, items)

    def _check_many_sync(self, items: Sequence[tuple[str, int]]) -> list[IntegrityError | None]:
        """Like check() of each, but the folders their paths share (uploads/<date>/...) are
        opened once: each is walked from its parent's fd without following symlinks, and
        each file is lstat-ed in its folder (a symlink there is not a regular file)."""
        found: list[IntegrityError | None] = []
        folders: dict[tuple[str, ...], int] = {}

        def folder(parts: tuple[str, ...]) -> int:
            fd = folders.get(parts)
            if fd is None:
                if len(folders) >= _CHECK_FOLDER_FDS:  # never near the fd limit
                    _close_all(folders)
                parent = os.open(self.root, fs.DIR_FLAGS) if not parts else folder(parts[:-1])
                fd = parent if not parts else fs.open_dir(parent, parts[-1:], "/".join(parts))
                folders[parts] = fd
            return fd

        try:
            for storage_path, size_bytes in items:
                parts = self._parts_of(storage_path)
                try:
                    st = os.stat(parts[-1], dir_fd=folder(parts[:-1]), follow_symlinks=False)
                except (FileNotFoundError, NotFound):
                    found.append(IntegrityError(f"its bytes at {storage_path} are missing"))
                    continue
                except (AssetError, OSError):  # a symlink, or no folder, on the way
                    found.append(_not_regular(storage_path))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    found.append(_not_regular(storage_path))
                elif st.st_size != size_bytes:
                    found.append(_wrong_size(storage_path, st.st_size, size_bytes))
                else:
                    found.append(None)
        finally:
            _close_all(folders)
        return found

    async def remove(self, storage_path: str) -> None:
        parts = self._parts_of(storage_path)
        await asyncio.to_thread(self._remove_sync, parts)

    def _remove_sync(self, parts: tuple[str, ...]) -> None:
        try:
            folder = self.open_folder(parts[:-1])
        except (OSError, AssetError):
            return  # gone already, or behind a symlink that is not ours to follow
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=folder)
        finally:
            os.close(folder)
        self._prune_empty(self.root.joinpath(*parts[:-1]))

    async def orphans(self) -> AsyncIterator[tuple[str, str]]:
        """Files in final locations older than the grace, as (asset id, path)."""
        for area in (self.uploads, self.generated):
            # <area>/<day-or-task>/<asset-id>/<name>
            for path, st in await asyncio.to_thread(_entries_under, area):
                try:
                    asset_id = parse_asset_id(path.parent.name)
                except InvalidArgument:
                    continue
                if _age(st) < self.orphan_grace_seconds:
                    continue  # may be another server's commit in flight
                yield asset_id, str(path)


def _entries_under(area: Path) -> list[tuple[Path, os.stat_result]]:
    found = []
    for path in area.glob("*/*/*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                found.append((path, st))
    return found


def _pread_batch(fd: int, offset: int, end: int, chunk_size: int) -> list[bytes]:
    """Chunks from `offset` up to READ_BATCH_BYTES (at least one chunk); stops early at EOF."""
    stop = min(end, offset + max(chunk_size, READ_BATCH_BYTES))
    chunks = []
    while offset < stop:
        chunk = os.pread(fd, min(chunk_size, stop - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return chunks


async def _read_chunks(
    opened: fs.Opened, storage_path: str, offset: int, end: int, chunk_size: int
) -> AsyncIterator[bytes]:
    try:
        while offset < end:
            # Several chunks per thread hop: one hop per chunk cost as much as the copy.
            batch = await asyncio.to_thread(_pread_batch, opened.fd, offset, end, chunk_size)
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


# check_many keeps at most this many folder fds open at once.
_CHECK_FOLDER_FDS = 64


def _close_all(fds: dict[tuple[str, ...], int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


def _not_regular(storage_path: str) -> IntegrityError:
    return IntegrityError(
        f"its bytes at {storage_path} are not a regular file; they are not followed"
    )


def _wrong_size(storage_path: str, actual: int, recorded: int) -> IntegrityError:
    return IntegrityError(
        f"its bytes at {storage_path} are {actual} bytes long; the record says {recorded} "
        "(truncated or replaced on disk)"
    )
