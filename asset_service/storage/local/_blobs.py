"""Bytes on their way into local storage: uploads streamed to staging, adopted server-side files."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import Any

from asset_service.domain.errors import AssetError, Conflict, SharedBytesGone, shown
from asset_service.domain.models import BlockSums
from asset_service.domain.ports import Chunk
from asset_service.storage import fs, journal, keys
from asset_service.storage.adoption import Source
from asset_service.storage.blocks import Digests, sums_of
from asset_service.storage.local._disk import Disk, oserror
from asset_service.storage.local._keyhold import KeyHold
from asset_service.storage.sink import FileSink

log = logging.getLogger(__name__)


class _Blob:
    """Bytes on their way to a key: commit() places them, then finish() or rollback().

    Between commit() and finish() the caller writes the record. If it cannot learn whether
    that write applied, abandon() keeps everything (bytes and any source) for recovery.

    From before its link(2) until then it holds its key (_keyhold.py): a file found at
    the name is no live commit's, and only the records can say whether it may go.
    """

    def __init__(self, disk: Disk, key: str | None = None) -> None:
        self._disk = disk
        self._opened_for = key  # the only key commit() takes, when given
        self.size_bytes = 0
        self.sha256 = hashlib.sha256().hexdigest()
        self.block_sums: BlockSums = sums_of(b"")
        self._final: tuple[int, str] | None = None  # (folder fd, name) once committed
        self._final_id: tuple[int, int] | None = None  # (dev, ino) of the committed file
        self._journal: Path | None = None
        self._done = False
        self._keyhold = KeyHold(disk)  # held from before link(2) until _close()

    async def commit(self, key: str) -> str:
        if self._opened_for is not None and key != self._opened_for:
            raise ValueError(f"a writer opened for {self._opened_for!r} cannot commit at {key!r}")
        parts = keys.key_parts(key)
        self._keyhold.parts = parts
        await asyncio.to_thread(self._commit_sync, parts)
        return str(self._disk.root.joinpath(*parts))

    async def _replace(self) -> str:
        """Occupied.replace(): commit again, setting the file at the name aside."""
        self._keyhold.replacing = True
        return await self.commit("/".join(self._keyhold.parts))

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        raise NotImplementedError

    def _place(
        self, staging: Path, parts: tuple[str, ...], move_source: dict[str, Any] | None
    ) -> None:
        """Link a fsynced staging file to its final name (never clobbering), then drop staging."""
        folder = self._disk.open_folder(parts[:-1], create=True)
        name = parts[-1]
        try:
            st = os.stat(staging)
            if move_source is not None:
                self._journal = self._disk.write_intent(
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
        """link(2) that never overwrites: _keyhold.py says what it does with a file there."""
        self._keyhold.link_new(src, name, src_dir, folder, self._replace)

    def _drop_final(self) -> None:
        if self._final is not None and self._final_id is not None:
            folder, name = self._final
            fs.unlink_if_same(folder, name, self._final_id)

    def _close(self) -> None:
        if self._final is not None:
            with contextlib.suppress(OSError):
                os.close(self._final[0])
            self._final = None
        self._keyhold.release()

    def _forget_journal(self) -> None:
        journal.forget(self._journal)
        self._journal = None

    async def finish(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await asyncio.to_thread(self._finish_sync)
        finally:
            self._close()

    def _finish_sync(self) -> None:
        self._forget_journal()
        self._keyhold.drop_aside()

    async def rollback(self) -> None:
        self.discard()  # plain syscalls: nothing to await

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._rollback_sync()
        finally:
            self._close()

    def _rollback_sync(self) -> None:
        self._drop_final()
        self._keyhold.put_back()
        self._forget_journal()
        if self._final is not None:
            self._disk.prune_empty(self._final[0])

    def abandon(self) -> None:
        """An occupant set aside stays in staging, removed with it (not journaled)."""
        if self._done:
            return
        self._done = True
        self._close()


class _Sunk(_Blob):
    """A blob whose bytes stream in through a FileSink (hashed and written on its own
    thread) to the file at `path`: a plain upload's staging file or a resumable session's
    data file, linked into place at commit."""

    _sink: FileSink
    path: Path

    async def write(self, chunk: Chunk) -> None:
        try:
            await self._sink.write(chunk)
        except OSError as exc:
            raise oserror(exc, "writing an upload") from None
        self.size_bytes += len(chunk)

    async def seal(self) -> None:
        try:
            self.sha256 = await self._sink.seal()
            self.block_sums = self._sink.block_sums
        except OSError as exc:
            raise oserror(exc, "writing an upload") from None

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        self._place(self.path, parts, None)

    def _rollback_sync(self) -> None:
        # The bytes only (a session's record stays until the domain saves or removes it).
        # The sink's thread closes the file itself once it sees the abort; the name goes now.
        self._sink.abort()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        super()._rollback_sync()


class Writer(_Sunk):
    """Streams chunks into a staging file through a FileSink (hashed and written on its own
    thread, behind a bounded queue); memory stays flat."""

    def __init__(self, disk: Disk, path: Path, key: str | None = None) -> None:
        super().__init__(disk, key)
        self.path = path
        try:
            # Made with the mode it will have once linked into place (staging is 0700).
            fd = disk.modes.new_file(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC, shared=True)
        except OSError as exc:
            raise oserror(exc, "staging an upload") from None
        self._sink = FileSink(fd, name=path.name[:8], direct=disk.direct_io)


class Cloned(_Blob):
    """A stored file linked under another key: the same inode, its bytes stored once. The
    link count is the reference count: rollback and remove() take one name away."""

    def __init__(
        self,
        disk: Disk,
        source: tuple[str, ...],
        size_bytes: int,
        sha256: str,
        sums: BlockSums,
    ) -> None:
        super().__init__(disk)
        self._source = source
        self.size_bytes, self.sha256, self.block_sums = size_bytes, sha256, sums

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        try:
            source_folder = self._disk.open_folder(self._source[:-1])
        except (OSError, AssetError):
            raise self._gone() from None
        try:
            folder = self._disk.open_folder(parts[:-1], create=True)
            try:
                try:
                    self._link_new(self._source[-1], parts[-1], source_folder, folder)
                except FileNotFoundError:
                    raise self._gone() from None
                st = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
                fs.fsync_dir(folder)
            except BaseException:
                os.close(folder)
                raise
        finally:
            os.close(source_folder)
        self._final, self._final_id = (folder, parts[-1]), (st.st_dev, st.st_ino)

    def _gone(self) -> SharedBytesGone:
        # The name went with its asset (a delete meanwhile): the caller looks for another
        # holder of the same bytes, or stores them anew, as with an object (s3/_shared.py).
        return SharedBytesGone("/".join(self._source))


class Adopted(_Blob):
    """A server-side file under an import root, held open (and flocked) from hash to finish.

    A move on the storage's file system is a hard link into place, then (after the record)
    the unlink of the source: the worker's file stays at its path until the record commits.
    Otherwise the bytes are copied into staging first. Either way a journal entry written
    before the final name appears lets start-up recovery finish or undo a move.
    """

    def __init__(self, disk: Disk, source: Source) -> None:
        super().__init__(disk)
        self.source = source
        self._staging: Path | None = None  # a copy, when linking is not possible
        # The source's mode, owner and group, once changed.
        self._was: tuple[int, int, int] | None = None

    def stage(self) -> None:
        st = self.source.opened.st
        same_fs = st.st_dev == self._disk.device
        # The one pass that hashes the file also sums its blocks.
        if self.source.move and same_fs and st.st_nlink == 1:
            digests, self.size_bytes = self._hash_source()
            self._sync_source()
        else:
            self._staging = self._disk.staging / uuid.uuid4().hex
            digests, self.size_bytes = self._copy_source(self._staging)
        self.sha256, self.block_sums = digests.sha.hexdigest(), digests.blocks.result()
        self.source.check_unchanged(self.size_bytes)

    def _hash_source(self) -> tuple[Digests, int]:
        digests, size = Digests(), 0
        for chunk in self.source.chunks():
            digests.update(chunk)
            size += len(chunk)
        return digests, size

    def _sync_source(self) -> None:
        # The worker's file becomes the stored file (linked): its bytes must be on disk
        # before the record says they are, whether or not the worker fsynced them.
        try:
            os.fsync(self.source.opened.fd)
        except OSError as exc:
            raise oserror(exc, "syncing a server-side file") from None

    def _copy_source(self, target: Path) -> tuple[Digests, int]:
        digests, size = Digests(), 0
        try:
            flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
            fd = self._disk.modes.new_file(target, flags, shared=True)
            with open(fd, "wb") as out:
                for chunk in self.source.chunks():
                    digests.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            raise oserror(exc, "copying a server-side file") from None
        return digests, size

    def _commit_sync(self, parts: tuple[str, ...]) -> None:
        if self._staging is not None:
            self._place(self._staging, parts, self.source.intent())
            self._staging = None
            return
        if not self._take_source():
            # Another user's file, whose mode is not ours to set: store a copy of our own.
            self._staging = self._disk.staging / uuid.uuid4().hex
            digests, _ = self._copy_source(self._staging)
            if digests.sha.hexdigest() != self.sha256:
                raise Conflict("the server-side file changed while it was being adopted")
            self._commit_sync(parts)
            return
        folder = self._disk.open_folder(parts[:-1], create=True)
        name = parts[-1]
        opened = self.source.opened
        st = opened.st
        try:
            self._journal = self._disk.write_intent(
                {**(self.source.intent() or {}), "final": "/".join(parts), "final_ino": st.st_ino}
            )
            try:
                self._link_new(opened.name, name, opened.parent_fd, folder)
            except FileNotFoundError:
                # The name went after it was opened (another request moved the file, or
                # the worker removed it): what was hashed is not at that name any more.
                raise Conflict(
                    f"{shown(self.source.raw)} was moved or removed while it was being adopted; "
                    "re-read the asset before retrying"
                ) from None
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._forget_journal()
                os.close(folder)
                folder = -1
                # Same device number, other mount (a bind mount): copy after all.
                self._staging = self._disk.staging / uuid.uuid4().hex
                digests, _ = self._copy_source(self._staging)
                if digests.sha.hexdigest() != self.sha256:
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
            self.source.check_unchanged(self.size_bytes)
            fs.fsync_dir(folder)
        except BaseException:
            if self._final is not None:
                self._rollback_sync()
            elif folder >= 0:
                os.close(folder)
            self._forget_journal()
            raise

    def _take_source(self) -> bool:
        """Make the file about to be linked into place a stored file: the same inode, so
        the worker's 0644 (and, for a server running as root, the worker's ownership) must
        not stay; False if it is not ours to change."""
        st, modes, fd = self.source.opened.st, self._disk.modes, self.source.opened.fd
        try:
            if st.st_uid != os.geteuid():
                os.fchown(fd, os.geteuid(), -1)  # only a privileged server may
            self._was = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            modes.set_fd(fd, modes.file(shared=True), shared=True)
        except PermissionError:
            return False
        return True

    async def forgo(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await asyncio.to_thread(self._forgo_sync)
        finally:
            self._close()

    def _forgo_sync(self) -> None:
        if self._staging is not None:  # a copy (never linked: nothing was placed)
            with contextlib.suppress(FileNotFoundError):
                self._staging.unlink()
            self._staging = None
        self.source.remove()

    def _finish_sync(self) -> None:
        self.source.remove()
        super()._finish_sync()

    def _rollback_sync(self) -> None:
        if self._staging is not None:
            with contextlib.suppress(FileNotFoundError):
                self._staging.unlink()
        if self._was is not None:
            # The worker's file stays where it was, as it was.
            mode, uid, gid = self._was
            with contextlib.suppress(OSError):
                os.fchown(self.source.opened.fd, uid, gid)
                os.fchmod(self.source.opened.fd, mode)
        super()._rollback_sync()

    def _close(self) -> None:
        super()._close()
        self.source.close()
