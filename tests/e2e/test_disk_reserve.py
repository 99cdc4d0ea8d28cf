"""End to end: DeleteAsset works on a full disk in every fill/delete cycle, not only the first."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import MiB, pattern_chunks, read_all, upload_sync
from tests.e2e.test_disk_full import HealthWatch, assert_no_internal_errors, free_bytes
from tests.serverproc import ServerProcess
from tests.tmpfs import unmount

FULL = grpc.StatusCode.RESOURCE_EXHAUSTED
RESERVE = 4 * MiB  # the default --disk-reserve-bytes
CYCLES = 6


@pytest.fixture
def mount_disk(tmp_path: Path) -> Iterator[object]:
    """mount_disk(size) -> a fresh tmpfs of that size; all unmounted at the end."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
        )
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        unmount(where)


def server_on(disk: Path, *flags: str) -> ServerProcess:
    root = disk / "data"
    return ServerProcess(
        root, f"sqlite:///{root / 'assets.db'}", extra_args=["--health-interval", "0.2", *flags]
    )


def releases(server: ServerProcess) -> int:
    return sum("released the" in line for line in server.log)


async def upload_until_full(address: str, size: int, tag: bytes) -> list[str]:
    made: list[str] = []
    for i in range(1000):
        chunks = pattern_chunks(size, seed=b"%s-%d" % (tag, i))
        try:
            asset = await asyncio.to_thread(upload_sync, address, chunks, label=f"{i}.bin")
        except grpc.RpcError as exc:
            assert exc.code() == FULL, f"{exc.code()}: {exc.details()}"
            return made
        made.append(asset.id)
    raise AssertionError("uploads never filled the disk")


async def values_until_full(stub: pb_grpc.AssetServiceStub, size: int) -> list[str]:
    made: list[str] = []
    for i in range(1000):
        try:
            reply = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label=f"v{i}", value=pb.Value(data=os.urandom(size)))
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == FULL, f"{exc.code()}: {exc.details()}"
            assert "disk is full" in (exc.details() or ""), exc.details()
            return made
        made.append(reply.asset.id)
    raise AssertionError("values never filled the disk")


async def delete(stub: pb_grpc.AssetServiceStub, asset_id: str, cycle: int) -> None:
    try:
        await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id))
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(f"cycle {cycle}: {exc.code()}: {exc.details()}") from None


def fill_rest(path: Path) -> None:
    """Take the disk's last bytes, as another writer on it would (or the service's own logs)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    block = 64 * 1024
    try:
        while block:
            try:
                os.write(fd, b"\0" * block)
            except OSError:
                block //= 2
    finally:
        os.close(fd)
    assert free_bytes(path.parent) == 0


async def test_delete_works_on_a_full_disk_in_every_cycle(mount_disk) -> None:  # type: ignore[no-untyped-def]
    server = server_on(mount_disk("20m")).start()
    root = server.root
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            with HealthWatch(server.address) as health:
                for cycle in range(CYCLES):
                    # A big VALUE: deleting it zeroes its pages (SECURE_DELETE builds), more
                    # than a full disk can take unless the WAL has that room already.
                    ballast = await stub.CreateValueAsset(
                        pb.CreateValueAssetRequest(label="b", value=pb.Value(data=b"b" * 3 * MiB))
                    )
                    tag = b"c%d" % cycle
                    files = await upload_until_full(server.address, MiB, tag)
                    values = await values_until_full(stub, 64 * 1024)
                    files += await upload_until_full(server.address, 64 * 1024, tag + b"s")
                    # Full for the service (it refuses uploads and values), and to the last byte.
                    fill_rest(root / f"filler{cycle}")

                    await delete(stub, ballast.asset.id, cycle)
                    for asset_id in values[1:] + files:  # a value of each cycle stays
                        await delete(stub, asset_id, cycle)
                    # The reserve is in place for the next time, and writes work again.
                    assert (root / "assets.db.reserve").stat().st_blocks * 512 >= RESERVE, cycle
                    data = b"".join(pattern_chunks(MiB, seed=tag + b"again"))
                    made = await asyncio.to_thread(upload_sync, server.address, [data], label="a")
                    assert await read_all(stub, made.id) == data
                    await delete(stub, made.id, cycle)
                    (root / f"filler{cycle}").unlink()
                await asyncio.sleep(0.3)  # a few more health answers
            health.assert_always_serving()
        # Several cycles needed it (which ones depends on where the WAL stood).
        assert releases(server) >= 1, "the disk was never full enough to need the reserve"
    finally:
        server.stop()
    assert_no_internal_errors(server)
    conn = sqlite3.connect(f"file:{root / 'assets.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_disk_too_small_for_the_reserve_refuses_to_start(mount_disk) -> None:  # type: ignore[no-untyped-def]
    disk = mount_disk("6m")
    server = server_on(disk)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            server.start()
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 2
    errors = [line for line in server.log if "ERROR" in line]
    assert len(errors) == 1, server.log
    assert "cannot start: the disk holding" in errors[0]
    assert f"is {6 * MiB} bytes, too small for the {RESERVE}-byte disk-full reserve" in errors[0]
    assert "give --disk-reserve-bytes a smaller size, at least 1MiB" in errors[0]
    assert not (server.root / "assets.db.reserve").exists()
    # A reserve the disk can hold: it starts, and makes it.
    smaller = server_on(disk, "--disk-reserve-bytes", "1MiB").start()
    try:
        assert (smaller.root / "assets.db.reserve").stat().st_blocks * 512 == MiB
    finally:
        smaller.stop()


async def test_without_room_for_the_reserve_only_deletes_are_written(mount_disk) -> None:  # type: ignore[no-untyped-def]
    disk = mount_disk("20m")
    server = server_on(disk).start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            data = b"".join(pattern_chunks(2 * MiB, seed=b"kept"))
            file = await asyncio.to_thread(upload_sync, server.address, [data], label="f")
            value = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="v", value=pb.Value(text="hello"))
            )
    finally:
        server.stop()
    root = server.root
    # Restarted on a disk that something else filled: no room for the reserve.
    (root / "assets.db.reserve").unlink()
    fill_rest(disk / "filler")
    os.truncate(disk / "filler", os.stat(disk / "filler").st_size - 3 * MiB)
    server = server_on(disk).start()
    try:
        warning = [line for line in server.log if "disk-full reserve" in line and "WARNING" in line]
        assert len(warning) == 1, server.log
        assert "writes other than deletes are refused until 4194304 bytes are free" in warning[0]
        assert "(DeleteAsset works meanwhile)" in warning[0]
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            with HealthWatch(server.address) as health:
                # Every write but a delete is refused, naming the cause and the way out,
                # though there is room for it: the room goes to the reserve first.
                refusals = [
                    stub.CreateValueAsset(
                        pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x"))
                    ),
                    stub.CreatePendingAsset(pb.CreatePendingAssetRequest(task_id="t", label="p")),
                    asyncio.to_thread(upload_sync, server.address, [b"x" * 1024], label="u"),
                ]
                for call in refusals:
                    with pytest.raises(grpc.RpcError) as info:
                        await call
                    err: grpc.aio.AioRpcError = info.value  # type: ignore[assignment]
                    assert err.code() == FULL, err.details()
                    assert "disk-full reserve" in (err.details() or ""), err.details()
                    assert "was spent and there is no room to re-create it" in (err.details() or "")
                    assert "delete assets with DeleteAsset" in (err.details() or "")
                assert sorted(p.name for p in (root / "uploads").rglob("*") if p.is_file()) == [
                    Path(file.storage_path).name
                ]
                # Deletes are written; the value gives back too little...
                await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=value.asset.id))
                assert not (root / "assets.db.reserve").exists()
                # ...the 2 MiB file, with what was free, enough: the reserve is back at once.
                await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=file.id))
                assert (root / "assets.db.reserve").stat().st_blocks * 512 >= RESERVE
                # Then writes go on, once there is room for them too.
                (disk / "filler").unlink()
                made = await stub.CreateValueAsset(
                    pb.CreateValueAssetRequest(label="v", value=pb.Value(text="again"))
                )
                assert made.asset.value.text == "again"
                await asyncio.sleep(0.3)
            health.assert_always_serving()
    finally:
        server.stop()
    assert_no_internal_errors(server)
