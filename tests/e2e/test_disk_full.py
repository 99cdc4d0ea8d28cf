"""End to end: a full disk gets RESOURCE_EXHAUSTED, leaves nothing behind, and recovers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import (
    MiB,
    all_assets,
    digest_of,
    pattern_chunks,
    read_all,
    stored_files,
    upload,
    upload_sync,
)
from tests.serverproc import ServerProcess, serving

FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
DISK_MIB = 24
# SqliteStore's reserve (asset_service/store/sqlite/_store.py DEFAULT_RESERVE_BYTES) sits on the
# same disk; it is released for a delete and re-created when space allows.
RESERVE_NAME = "assets.db.reserve"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs for the storage root and its SQLite database; failing to mount fails."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def full_server(disk: Path, import_root: Path) -> Iterator[ServerProcess]:
    root = disk / "data"
    # Always SQLite here: the point is the database sharing the full disk with the bytes.
    with serving(
        ServerProcess(
            root,
            f"sqlite:///{root / 'assets.db'}",
            import_roots=[import_root],
            extra_args=["--health-interval", "0.2"],
        )
    ) as proc:
        yield proc


@pytest.fixture
async def full_stub(full_server: ServerProcess) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(full_server.address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def reclaimable(root: Path) -> int:
    """Free space plus what the database holds (its reserve, its WAL), which moves around."""
    db_files = [root / n for n in (RESERVE_NAME, "assets.db", "assets.db-wal")]
    return free_bytes(root) + sum(allocated(p) for p in db_files)


class HealthWatch:
    """Polls grpc.health.v1 in the background; every answer must be SERVING."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service="asset.v1.AssetService"),
                        timeout=5,
                    )
                    answer = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    answer = exc.code().name
                self.answers.append(answer)
                await asyncio.sleep(0.1)

    def __enter__(self) -> HealthWatch:
        self._task = asyncio.get_running_loop().create_task(self._poll())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def assert_always_serving(self) -> None:
        assert self.answers, "the health check never answered"
        assert set(self.answers) == {"SERVING"}, self.answers


def assert_no_internal_errors(server: ServerProcess) -> None:
    """Every failure was a domain error: nothing was logged as unexpected."""
    unexpected = [line for line in server.log if "Traceback" in line or "unexpected" in line]
    assert unexpected == [], "".join(server.log)


async def no_leftovers(root: Path, expected: list[Path]) -> None:
    """The failed call's staging is gone (polled: the server unwinds after answering)."""
    for _ in range(50):
        if stored_files(root) == sorted(expected):
            return
        await asyncio.sleep(0.1)
    assert stored_files(root) == sorted(expected)


async def test_uploads_until_full_then_delete_frees_space(
    full_stub: pb_grpc.AssetServiceStub, full_server: ServerProcess
) -> None:
    stub, root = full_stub, full_server.root
    assert (root / RESERVE_NAME).stat().st_blocks * 512 >= 4 * MiB  # made at start-up
    with HealthWatch(full_server.address) as health:
        # A big VALUE: deleting it zeroes its pages (SECURE_DELETE builds), which a full
        # disk cannot take unless its WAL has that room already: then the reserve is spent.
        ballast = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="ballast", value=pb.Value(data=b"b" * 3 * MiB))
        )
        kept: list[tuple[pb.Asset, str]] = []
        refused: grpc.RpcError | None = None
        address = full_server.address
        for i in range(DISK_MIB):  # 4 MiB each: the disk is full long before that
            seed = f"upload {i}".encode()
            chunks = pattern_chunks(4 * MiB, seed=seed)
            try:
                asset = await asyncio.to_thread(upload_sync, address, chunks, label=f"{i}.bin")
            except grpc.RpcError as exc:
                refused = exc
                break
            kept.append((asset, digest_of(pattern_chunks(4 * MiB, seed=seed))[0]))
        assert refused is not None, "the disk never filled up"
        assert refused.code() == FULL, f"{refused.code()}: {refused.details()}"
        assert "full" in (refused.details() or ""), refused.details()
        assert len(kept) >= 2
        # The failed upload left no record and no staging file; earlier assets are intact.
        assert {a.id for a in await all_assets(stub)} == {a.id for a, _ in kept} | {
            ballast.asset.id
        }
        await no_leftovers(root, [Path(a.storage_path) for a, _ in kept])
        for asset, sha in kept:
            assert hashlib.sha256(await read_all(stub, asset.id)).hexdigest() == sha

        # Fill what the failed upload gave back, then the database's own share.
        small: list[pb.Asset] = []
        for i in range(200):
            chunks = pattern_chunks(256 * 1024, seed=b"s%d" % i)
            try:
                small.append(await asyncio.to_thread(upload_sync, address, chunks, label="s"))
            except grpc.RpcError as exc:
                assert exc.code() == FULL, f"{exc.code()}: {exc.details()}"
                break
        value_errors: list[grpc.aio.AioRpcError] = []
        for i in range(40):
            try:
                await stub.CreateValueAsset(
                    pb.CreateValueAssetRequest(
                        label=f"v{i}", value=pb.Value(data=os.urandom(1 * MiB))
                    )
                )
            except grpc.aio.AioRpcError as exc:
                value_errors.append(exc)
                if len(value_errors) == 3:
                    break
        assert value_errors, "CreateValueAsset never hit the full disk"
        for exc in value_errors:
            assert exc.code() == FULL, f"{exc.code()}: {exc.details()}"
            assert "disk is full" in (exc.details() or ""), exc.details()
            assert "DeleteAsset" in (exc.details() or ""), exc.details()
            assert "cannot rollback" not in (exc.details() or "")
        assert free_bytes(root) < 1 * MiB

        # Deleting works on the full disk (through the database's reserve if need be, made
        # again at once from the VALUE's pages)...
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=ballast.asset.id))
        await expect_gone(stub, ballast.asset.id)
        assert (root / RESERVE_NAME).stat().st_blocks * 512 >= 4 * MiB

        # ...and deleting a big FILE asset gives its space back.
        (big, _), *rest = kept
        before = reclaimable(root)
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=big.id))
        assert not Path(big.storage_path).exists()
        await expect_gone(stub, big.id)
        after = reclaimable(root)
        assert after - before >= 4 * MiB - 64 * 1024, (before, after)

        # Writes work again: an upload and a value.
        again = await upload(stub, pattern_chunks(1 * MiB, seed=b"again"), label="again.bin")
        assert await read_all(stub, again.id) == b"".join(pattern_chunks(1 * MiB, seed=b"again"))
        await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="note", value=pb.Value(text="space again"))
        )
        for asset, sha in rest:
            assert hashlib.sha256(await read_all(stub, asset.id)).hexdigest() == sha
        files = [Path(a.storage_path) for a in await all_assets(stub) if a.storage_path]
        await no_leftovers(root, files)
        await asyncio.sleep(0.5)  # a few more health answers after the recovery
    health.assert_always_serving()
    assert full_server.proc is not None and full_server.proc.poll() is None
    assert_no_internal_errors(full_server)


async def expect_gone(stub: pb_grpc.AssetServiceStub, asset_id: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetAsset(pb.GetAssetRequest(asset_id=asset_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("move", [False, True])
async def test_register_file_bigger_than_free_space(
    full_stub: pb_grpc.AssetServiceStub,
    full_server: ServerProcess,
    import_root: Path,
    move: bool,
) -> None:
    stub, root = full_stub, full_server.root
    # The import root is on the big disk: the copy into the small one runs out of space.
    source = import_root / "huge.bin"
    with open(source, "wb") as fh:
        for chunk in pattern_chunks(DISK_MIB * MiB + MiB, seed=b"huge"):
            fh.write(chunk)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    st = source.stat()
    with HealthWatch(full_server.address) as health:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RegisterFile(pb.RegisterFileRequest(path=str(source), move=move))
        assert info.value.code() == FULL, f"{info.value.code()}: {info.value.details()}"
        assert "full" in (info.value.details() or "")
        # The source is untouched, nothing was recorded, nothing is left in storage.
        assert source.stat().st_ino == st.st_ino and source.stat().st_size == st.st_size
        assert hashlib.sha256(source.read_bytes()).hexdigest() == sha
        assert await all_assets(stub) == []
        await no_leftovers(root, [])
        # The space the attempt used is back: a file that fits is adopted.
        fits = import_root / "fits.bin"
        fits.write_bytes(b"fits" * 1024)
        made = await stub.RegisterFile(pb.RegisterFileRequest(path=str(fits), move=move))
        assert await read_all(stub, made.asset.id) == b"fits" * 1024
        await asyncio.sleep(0.3)
    health.assert_always_serving()
    assert_no_internal_errors(full_server)
