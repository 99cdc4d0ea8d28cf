"""What the audit reads (records, bytes, the storage root's folders), and the worker's files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.crashloop._model import CALL_TIMEOUT, CHANNEL_OPTIONS, STAGING_KEEP, STATUS


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.AssetServiceStub(channel)


async def list_all(
    stub: pb_grpc.AssetServiceStub, page_size: int = 100, type_: int = 0
) -> list[pb.Asset]:
    """Every record (of `type_`), all pages; VALUE contents ride along, so pages stay small."""
    assets: list[pb.Asset] = []
    token = ""
    while True:
        req = pb.ListAssetsRequest(page_size=page_size, page_token=token, type=type_)  # type: ignore[arg-type]
        page = await stub.ListAssets(req, timeout=CALL_TIMEOUT)
        assets += page.assets
        token = page.next_page_token
        if not token:
            return assets


async def read_back(stub: pb_grpc.AssetServiceStub, a: pb.Asset) -> str | None:
    """None if the asset reads back with exactly its size and sha256, else what is wrong."""
    digest, size = hashlib.sha256(), 0
    try:
        async for part in stub.ReadAsset(pb.ReadAssetRequest(asset_id=a.id), timeout=CALL_TIMEOUT):
            digest.update(part.chunk)
            size += len(part.chunk)
    except grpc.aio.AioRpcError as err:
        return f"ReadAsset failed: {err.code().name} {err.details()}"
    if size != a.size_bytes or digest.hexdigest() != a.sha256:
        return (
            f"reads back {size} bytes with sha256 {digest.hexdigest()}, record says "
            f"{a.size_bytes} bytes with sha256 {a.sha256}"
        )
    return None


def storage_violations(
    root: Path, records: list[pb.Asset], live_pid: int | set[int], orphans: bool = True
) -> list[str]:
    """Staging holds only the live processes' locks (one each); uploads/ and generated/
    hold no orphans (unless `orphans` is False: another process may be committing).

    Call it while no request runs: `records` must list every FILE record.
    """
    out = []
    pids = live_pid if isinstance(live_pid, set) else {live_pid}
    staging = root / "tmp" / "staging"
    folders = sorted(staging.iterdir()) if staging.is_dir() else []
    live = [f for f in folders if f.is_dir() and _is_locked(f / ".lock")]
    if len(live) != len(pids):
        out.append(f"{staging} has {len(live)} live (locked) folders, expected {len(pids)}")
    for entry in folders:
        if entry not in live:
            out.append(f"staging left behind by a dead process (or stray): {entry}")
            continue
        if entry.name.split("-")[0] not in {str(pid) for pid in pids}:
            out.append(f"live staging folder {entry} is not named after a live pid {pids}")
        for leftover in entry.rglob("*"):
            if not leftover.is_dir() and leftover.name not in STAGING_KEEP:
                out.append(f"staging file left in the live folder: {leftover}")
    on_disk = {
        p
        for area in ("uploads", "generated")
        if (root / area).is_dir()
        for p in (root / area).rglob("*")
        if p.is_file() or p.is_symlink()
    }
    referenced = {Path(a.storage_path) for a in records if a.storage_path}
    for orphan in sorted(on_disk - referenced) if orphans else []:
        out.append(f"orphan file no record points at (--orphan-grace 0): {orphan}")
    for a in records:
        if a.storage_path and Path(a.storage_path) not in on_disk:
            out.append(f"asset {a.id} ({STATUS(a.status)}) points at missing {a.storage_path}")
    return out


def _is_locked(lock: Path) -> bool:
    """Is a live process holding this staging lock? (Taking it for a moment tells.)"""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def write_worker_file(path: Path, data: bytes, durable: bool) -> None:
    """The worker's output; with `durable`, fsynced with its folder entry (power cuts)."""
    with open(path, "wb") as out:
        out.write(data)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    if durable:
        fsync_folder(path.parent)


def remove_worker_file(path: Path, durable: bool) -> None:
    """The worker removes its file; with `durable` the removal survives a power cut."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    if durable:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Makes the folder's entries durable (fsync of the folder itself), errors raised."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
