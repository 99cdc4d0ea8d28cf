"""Uploads and downloads for both clients: a file's chunks, hashed as they go; fsync, rename."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import grpc

from asset_client import _convert, _resume
from asset_client._convert import pb
from asset_client._progress import Progress, ProgressCallback
from asset_client.errors import DataLossError, from_rpc_error
from asset_client.models import Asset, AssetType

CHUNK_SIZE = 1024 * 1024


def sha256_file(fh: IO[bytes]) -> tuple[str, int]:
    """Hex SHA-256 and size of a file object, read in chunks from its start."""
    fh.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    fh.seek(0)
    return digest.hexdigest(), size


class Upload:
    """One file upload: header first, then 1 MiB chunks, hashed while read.

    With `checksum` (the default) the file is hashed in a first pass, so the header carries
    `expected_sha256` and `expected_size_bytes` and the server refuses (DATA_LOSS) content
    that does not match, e.g. a file changed while being sent. Without it only the size is
    declared. Either way the digest of the bytes actually sent is compared with the one the
    server reports.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        label: str | None,
        media_type: str | None,
        tags: Iterable[str],
        pending_asset_id: str | None,
        progress: bool | ProgressCallback,
        checksum: bool,
        resumable: bool | None = None,
        attempts: int = _resume.DEFAULT_ATTEMPTS,
        reuse: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.reuse = reuse
        self.checksum = checksum
        self.header = pb.UploadHeader(
            label=label if label is not None else ("" if pending_asset_id else self.path.name),
            media_type=media_type or "",
            tags=_convert.tags_list(tags),
            pending_asset_id=pending_asset_id or "",
        )
        self.progress_enabled = progress is True
        self.on_progress = progress if callable(progress) else None
        self.resumable = resumable
        self.retries = _resume.Retries(attempts)
        self.hasher = hashlib.sha256()
        self.error: BaseException | None = None
        self.fh: IO[bytes] | None = None
        self.bar: Progress | None = None
        self.size = 0
        self.sent = 0  # the file offset of the next chunk
        self.reported = 0  # progress never goes back when a resume resends a little
        self.resumed_unhashed = False  # hasher no longer covers every byte sent

    def open(self) -> None:
        """Open the file and fill in the header (blocking: may hash the whole file)."""
        self.fh = self.path.open("rb")
        try:
            if self.checksum:
                digest, size = sha256_file(self.fh)
                self.header.expected_sha256 = digest
            else:
                size = os.fstat(self.fh.fileno()).st_size
            self.header.expected_size_bytes = size
        except BaseException:
            self.close()
            raise
        self.size = size
        if self.reuse is None:
            self.reuse = self.checksum and size >= _resume.REUSE_BYTES
        elif self.reuse and not self.checksum:
            raise ValueError("reuse=True needs checksum=True: the server looks bytes up by sha256")
        if self.resumable is None:
            self.resumable = size >= _resume.RESUMABLE_BYTES
        if self.resumable:
            self.header.upload_id = _resume.new_upload_id()
        self.bar = Progress(size, f"upload {self.path.name}", self.progress_enabled)

    def retry_delay(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before resuming after `exc`, None if it does not resume."""
        if not self.resumable or self.error is not None:
            return None
        return self.retries.delay(exc)

    def restart(self) -> None:
        """The server does not know this upload: the next stream starts it again from 0,
        under a new upload_id (the old one may name an expired session)."""
        self.header.upload_id = _resume.new_upload_id()

    def query_request(self) -> pb.QueryUploadRequest:
        return pb.QueryUploadRequest(upload_id=self.header.upload_id)

    def resume_at(self, offset: int) -> None:
        """The next stream sends from `offset` (QueryUpload's committed_bytes): blocking,
        it re-reads the file up to there if the bytes sent hash differently."""
        assert self.fh is not None
        if offset != self.sent and self.checksum:
            # The header's expected_sha256 (the first pass) is what the server checks the
            # whole file against: no need to hash the prefix again.
            self.resumed_unhashed, self.sent = True, offset
        elif offset != self.sent:
            self.fh.seek(0)
            self.hasher, done = hashlib.sha256(), 0
            while done < offset and (data := self.fh.read(min(CHUNK_SIZE, offset - done))):
                self.hasher.update(data)
                done += len(data)
            self.sent = done
        self.fh.seek(self.sent)
        self.header.write_offset = self.sent

    def reuse_requests(self) -> Iterator[pb.UploadAssetRequest]:
        """The one message of a stream asking the server to reuse bytes it stores: the
        header (size and sha256 declared), reuse_stored_bytes, no upload_id, no chunk."""
        header = pb.UploadHeader()
        header.CopyFrom(self.header)
        header.upload_id, header.write_offset = "", 0
        header.reuse_stored_bytes = True
        yield pb.UploadAssetRequest(header=header)

    def reused(self, response: pb.UploadAssetResponse) -> Asset:
        """The asset the server made from bytes it stores; progress shows the file done."""
        assert self.bar is not None
        self.resumed_unhashed = True  # finish() checks the sha256 of the first pass
        self.bar.update(self.size - self.reported)
        self.reported = self.size
        if self.on_progress is not None:
            self.on_progress(self.size, self.size)
        return self.finish(response)

    def header_request(self) -> pb.UploadAssetRequest:
        return pb.UploadAssetRequest(header=self.header)

    def next_request(self) -> pb.UploadAssetRequest | None:
        """The next chunk message, or None at end of file; remembers a read error."""
        assert self.fh is not None and self.bar is not None
        try:
            data = self.fh.read(CHUNK_SIZE)
        except BaseException as exc:
            self.error = exc
            raise
        if not data:
            return None
        self.hasher.update(data)
        self.sent += len(data)
        if self.sent > self.reported:
            self.bar.update(self.sent - self.reported)
            self.reported = self.sent
            if self.on_progress is not None:
                self.on_progress(self.reported, self.size)
        return pb.UploadAssetRequest(chunk=data)

    def requests(self) -> Iterator[pb.UploadAssetRequest]:
        yield self.header_request()
        while (request := self.next_request()) is not None:
            yield request

    def failure(self, exc: grpc.RpcError) -> BaseException:
        """What to raise for a failed call: our own read error first, else the typed error."""
        return self.error if self.error is not None else from_rpc_error(exc)

    def finish(self, response: pb.UploadAssetResponse) -> Asset:
        asset = _convert.asset_from_pb(response.asset)
        sent = self.header.expected_sha256 if self.resumed_unhashed else self.hasher.hexdigest()
        if asset.sha256 and asset.sha256 != sent:
            raise DataLossError(
                f"asset {asset.id}: the server stored sha256 {asset.sha256}, "
                f"but the bytes sent hash to {sent}"
            )
        return asset

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.fh is not None:
            self.fh.close()


class Download:
    """Writes a download to a temporary file beside `dest`; fsync + rename on success only."""

    def __init__(
        self, dest: str | os.PathLike[str], asset: Asset, progress: bool | ProgressCallback
    ) -> None:
        self.dest = Path(dest)
        self.asset = asset
        self.hasher = hashlib.sha256()
        self.written = 0
        self.fh: IO[bytes] | None = None
        self.tmp: Path | None = None
        self.on_progress = progress if callable(progress) else None
        self.bar = Progress(asset.size_bytes or None, f"download {asset.label}", progress is True)

    def open(self) -> Download:
        # Mode 0o666 less the umask, as any program's new file (tempfile's 0o600 would
        # make every download private). An error names DEST's folder, not the temp file.
        for _ in range(100):
            tmp = self.dest.parent / f".{self.dest.name}.{secrets.token_hex(4)}.part"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, str(self.dest.parent)) from None
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", str(self.dest.parent))
        self.tmp = tmp
        self.fh = os.fdopen(fd, "wb")
        return self

    def request(self) -> pb.ReadAssetRequest:
        return pb.ReadAssetRequest(asset_id=self.asset.id)

    def write(self, msg: pb.ReadAssetResponse) -> None:
        assert self.fh is not None
        if msg.offset != self.written:
            raise DataLossError(
                f"asset {self.asset.id}: chunk at offset {msg.offset}, expected {self.written}"
            )
        self.fh.write(msg.chunk)
        self.hasher.update(msg.chunk)
        self.written += len(msg.chunk)
        self.bar.update(len(msg.chunk))
        if self.on_progress is not None:
            self.on_progress(self.written, self.asset.size_bytes)

    def commit(self) -> Path:
        """Verify size and digest, fsync, rename into place (blocking)."""
        assert self.fh is not None and self.tmp is not None
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        digest = self.hasher.hexdigest()
        if self.asset.type is AssetType.FILE and self.written != self.asset.size_bytes:
            raise DataLossError(
                f"asset {self.asset.id}: received {self.written} bytes, "
                f"expected {self.asset.size_bytes}"
            )
        if self.asset.type is AssetType.FILE and self.asset.sha256 and digest != self.asset.sha256:
            raise DataLossError(
                f"asset {self.asset.id}: received bytes hash to {digest}, "
                f"expected {self.asset.sha256}"
            )
        os.replace(self.tmp, self.dest)
        self.tmp = None
        _fsync_dir(self.dest.parent)
        self.bar.close()
        return self.dest

    def abort(self) -> None:
        self.bar.close()
        if self.fh is not None:
            self.fh.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None

    def __enter__(self) -> Download:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
