"""End to end: SIGKILL mid-upload and after fulfills; a restart loses nothing, leaves no orphans."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import (
    MiB,
    pattern_chunks,
    pending_asset,
    read_all,
    stored_files,
    unfinished_upload,
    upload,
    value_asset,
)
from tests.serverproc import ServerProcess, database_url_for, serving


async def test_sigkill_and_restart(tmp_path: Path, import_root: Path) -> None:
    with serving(
        ServerProcess(tmp_path / "data", database_url_for(tmp_path), import_roots=[import_root])
    ) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            uploaded = await upload(stub, pattern_chunks(3 * MiB), label="kept.bin")
            value = await value_asset(stub, "v", json="[1]")
            fulfilled = await pending_asset(stub, "done.txt")
            src = import_root / "done.txt"
            src.write_text("produced")
            fulfilled = (
                await stub.FulfillAsset(
                    pb.FulfillAssetRequest(asset_id=fulfilled.id, source_path=str(src))
                )
            ).asset
            waiting = [
                await pending_asset(stub, f"w{i}", type=pb.ASSET_TYPE_VALUE) for i in range(2)
            ]
            # A watcher follows the two promises, then loses its server.
            seen: list[pb.WatchAssetResponse] = []
            watch = stub.WatchAsset(
                pb.WatchAssetRequest(asset_ids=[w.id for w in waiting], follow=True)
            )
            async for event in watch:
                seen.append(event)
                if len(seen) == 2:
                    break
            last_revision = max(e.revision for e in seen)

            # An upload is streaming when the server dies.
            streaming = asyncio.Event()
            requests = unfinished_upload("interrupted.bin", pattern_chunks(6 * MiB), streaming)
            interrupted = asyncio.ensure_future(stub.UploadAsset(requests))
            await asyncio.wait_for(streaming.wait(), 30)
            assert any("staging" in p.parts for p in stored_files(server.root))
            server.kill()
            try:
                await asyncio.wait_for(interrupted, 10)
                raise AssertionError("the upload cannot have succeeded")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            watch.cancel()

        server.start()  # same storage root and database, new process
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            # No staging left: the dead process's folder was swept at start-up.
            assert [p for p in stored_files(server.root) if "staging" in p.parts] == []
            files = stored_files(server.root)
            assert sorted(files) == sorted(
                [Path(uploaded.storage_path), Path(fulfilled.storage_path)]
            )
            # Every AVAILABLE asset reads back byte-identical.
            assert hashlib.sha256(await read_all(stub, uploaded.id)).hexdigest() == uploaded.sha256
            assert await read_all(stub, fulfilled.id) == b"produced"
            assert await read_all(stub, value.id) == b"[1]"
            for w in waiting:
                got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=w.id))).asset
                assert got.status == pb.ASSET_STATUS_PENDING and got == w
            listed = await stub.ListAssets(pb.ListAssetsRequest(label="interrupted.bin"))
            assert list(listed.assets) == []

            # While the watcher was away, one promise was kept...
            first = await stub.FulfillAsset(
                pb.FulfillAssetRequest(asset_id=waiting[0].id, value=pb.Value(text="A"))
            )
            # ...and it resumes from the last revision it saw.
            resumed: list[pb.WatchAssetResponse] = []
            started = asyncio.Event()

            async def follow() -> None:
                req = pb.WatchAssetRequest(
                    asset_ids=[w.id for w in waiting], after_revision=last_revision
                )
                async for event in stub.WatchAsset(req, timeout=20):
                    resumed.append(event)
                    started.set()

            task = asyncio.create_task(follow())
            await asyncio.wait_for(started.wait(), 10)
            second = await stub.FailAsset(
                pb.FailAssetRequest(asset_id=waiting[1].id, reason="gave up")
            )
            await asyncio.wait_for(task, 10)
            assert [(e.asset.id, e.asset.status, e.revision) for e in resumed] == [
                (waiting[0].id, pb.ASSET_STATUS_AVAILABLE, first.asset.revision),
                (waiting[1].id, pb.ASSET_STATUS_FAILED, second.asset.revision),
            ]
            assert all(e.revision > last_revision for e in resumed)


async def test_sigterm_stops_gracefully_and_deadlines_are_honoured(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", database_url_for(tmp_path)).start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            pending = await pending_asset(stub, "x")
            watch = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[pending.id]), timeout=0.5)
            events = []
            try:
                async for event in watch:
                    events.append(event)
                raise AssertionError("the watch cannot end: the asset is still PENDING")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert [e.type for e in events] == [pb.WATCH_EVENT_TYPE_SNAPSHOT]
    finally:
        code = server.stop()
    assert code == 0, "".join(server.log)
    assert any("stopped" in line for line in server.log)


async def test_startup_sweeps_orphan_files_but_keeps_referenced_ones(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    with serving(
        ServerProcess(tmp_path / "data", url, extra_args=["--orphan-grace", "60"])
    ) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            kept = await upload(stub, [b"kept"], label="kept.bin")
        server.stop()
        # What a crash between rename and record leaves: a file no record points at.
        old = server.root / "uploads" / "2026-01-01" / "5b0e4f0e-0000-4000-8000-00000000dead"
        old.mkdir(parents=True)
        (old / "lost.bin").write_bytes(b"orphan")
        young = server.root / "generated" / "t" / "5b0e4f0e-0000-4000-8000-00000000beef"
        young.mkdir(parents=True)
        (young / "in-flight.bin").write_bytes(b"maybe another server's commit")
        an_hour_ago = time.time() - 3600
        os.utime(old / "lost.bin", (an_hour_ago, an_hour_ago))
        os.utime(kept.storage_path, (an_hour_ago, an_hour_ago))
        server.start()
        assert not old.exists(), "an old orphan must be swept"
        assert (young / "in-flight.bin").exists(), "a young file may be a commit in flight"
        assert Path(kept.storage_path).read_bytes() == b"kept"
        assert any("orphan" in line for line in server.log)


def test_a_second_server_on_the_same_sqlite_database_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # always SQLite: this is its single-process guard
    first = ServerProcess(tmp_path / "one", url).start()
    second = ServerProcess(tmp_path / "two", url)
    try:
        try:
            second.start(timeout=15)
            raise AssertionError("a second server on the same SQLite file must not start")
        except RuntimeError:
            pass
        assert second.proc is not None and second.proc.returncode == 2
        assert any("another asset-service process is using" in line for line in second.log)
    finally:
        second.stop()
        first.stop()
    third = ServerProcess(tmp_path / "three", url).start()  # free again once the first stops
    third.stop()
