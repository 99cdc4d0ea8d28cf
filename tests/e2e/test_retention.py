"""End to end: retention that knows its consumers (issue 23).

Expired assets go by themselves, and only once nothing needs them: an input that a live
task's token names outlives its TTL and goes right after the task's promise resolves; a
watcher sees the deletion with its reason; DeleteAsset of a held asset names the holders;
a crash in the middle of a sweep loses nothing held and leaves no bytes without a record.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from asset_client import AssetClient, FailedPreconditionError, NotFoundError

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import all_assets, expect_error, read_all, stored_files, upload
from tests.e2e.scrape import metrics_port, scrape
from tests.e2e.security_helpers import ADMIN, ORCH, bearer, token_server
from tests.serverproc import ServerProcess, database_url_for, drop_database_of, serving

SWEEP = "0.2"  # --retention-check-interval


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    rules = ["--retention-check-interval", SWEEP, "--expiry-rule", "failed,status=FAILED,1s"]
    with token_server(tmp_path, *rules) as server:
        yield server


@pytest.fixture
async def stub(secured: ServerProcess) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


async def expiring_value(stub: pb_grpc.AssetServiceStub, label: str, text: str) -> pb.Asset:
    """A VALUE asset the orchestrator made, with a TTL of one second."""
    request = pb.CreateValueAssetRequest(label=label, value=pb.Value(text=text), ttl_seconds=1)
    return (await stub.CreateValueAsset(request, metadata=ORCH)).asset


async def value_promise(stub: pb_grpc.AssetServiceStub, task_id: str, label: str) -> pb.Asset:
    """A PENDING VALUE asset the orchestrator promised for a task."""
    request = pb.CreatePendingAssetRequest(task_id=task_id, label=label, type=pb.ASSET_TYPE_VALUE)
    return (await stub.CreatePendingAsset(request, metadata=ORCH)).asset


async def deletion(stub: pb_grpc.AssetServiceStub, asset_id: str) -> tuple[pb.Asset, float]:
    """Follow one asset until its DELETED event: that event's asset, and when it came."""
    request = pb.WatchAssetRequest(asset_ids=[asset_id], follow=True)
    async for event in stub.WatchAsset(request, metadata=ADMIN, timeout=20):
        if event.type == pb.WATCH_EVENT_TYPE_DELETED:
            return event.asset, time.monotonic()
    raise AssertionError("the watch ended without a deletion")


async def test_a_live_tasks_input_outlives_its_ttl_and_goes_right_after_the_promise(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    source = await expiring_value(stub, "in.txt", "input")
    assert source.expiry_rule == "ttl" and source.HasField("expire_time")
    promise = await value_promise(stub, "render-1", "out")
    minted = await stub.MintTaskToken(
        pb.MintTaskTokenRequest(task_id="render-1", input_asset_ids=[source.id]), metadata=ORCH
    )
    held = (await stub.GetAsset(pb.GetAssetRequest(asset_id=source.id), metadata=ADMIN)).asset
    assert [(h.owner, h.kind) for h in held.holds] == [("task:render-1", "TASK")]
    assert held.revision == source.revision  # a hold is no change of the asset

    watcher = asyncio.create_task(deletion(stub, source.id))
    await asyncio.sleep(2.5)  # over twice its TTL, a dozen sweeps: still there
    assert not watcher.done()
    await expect_error(
        stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=source.id), metadata=ADMIN),
        grpc.StatusCode.FAILED_PRECONDITION,
        "task:render-1",
    )

    resolved = time.monotonic()
    await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=promise.id, value=pb.Value(text="done")),
        metadata=bearer(minted.token),
    )
    gone, at = await asyncio.wait_for(watcher, 10)
    assert gone.id == source.id and gone.deletion_reason == "expired (ttl)"
    assert gone.updated_by == "retention"
    assert at - resolved < 1.5, at - resolved  # within a sweep or so of the promise
    await expect_error(
        stub.GetAsset(pb.GetAssetRequest(asset_id=source.id), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
    )
    # The output itself has no expiry: no rule matches an AVAILABLE value.
    output = await stub.GetAsset(pb.GetAssetRequest(asset_id=promise.id), metadata=ADMIN)
    assert not output.asset.HasField("expire_time")


async def test_a_waiting_manifests_inputs_do_not_expire_while_it_waits(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    made = await expiring_value(stub, "cfg", "c")
    promise = await value_promise(stub, "t-w", "frames")
    request = pb.GetManifestRequest(
        asset_mappings={"cfg": made.id, "frames": promise.id}, wait=True
    )

    async def manifest() -> pb.GetManifestResponse:
        return await stub.GetManifest(request, metadata=ORCH, timeout=15)

    waiting = asyncio.create_task(manifest())
    await asyncio.sleep(2.0)  # cfg's TTL has passed, a dozen sweeps ran: it waits on
    await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=promise.id, value=pb.Value(text="f")),
        metadata=ORCH,
    )
    built = await asyncio.wait_for(waiting, 10)
    assert built.manifest_path
    kept = await stub.GetAsset(pb.GetAssetRequest(asset_id=made.id), metadata=ADMIN)
    assert kept.asset.HasField("retain_until_time")


async def test_a_watcher_sees_an_expiry_by_rule_with_its_reason(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    promise = await value_promise(stub, "t-2", "x")
    watcher = asyncio.create_task(deletion(stub, promise.id))
    failed = await stub.FailAsset(
        pb.FailAssetRequest(asset_id=promise.id, reason="broke"), metadata=ORCH
    )
    assert failed.asset.expiry_rule == "failed"  # --expiry-rule failed,status=FAILED,1s
    gone, _ = await asyncio.wait_for(watcher, 10)
    assert gone.deletion_reason == "expired (rule failed)" and gone.status == pb.ASSET_STATUS_FAILED


async def test_holds_keep_an_asset_and_deleting_it_names_them(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    asset_id = (await expiring_value(stub, "keep", "k")).id
    placed = await stub.PlaceHold(
        pb.PlaceHoldRequest(asset_id=asset_id, owner="audit-2026", reason="legal"), metadata=ORCH
    )
    assert [(h.owner, h.reason, h.placed_by) for h in placed.asset.holds] == [
        ("audit-2026", "legal", "orchestrator-1")
    ]
    await asyncio.sleep(1.8)  # expired, but held
    await expect_error(
        stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset_id), metadata=ADMIN),
        grpc.StatusCode.FAILED_PRECONDITION,
        "audit-2026 (legal)",
    )
    await expect_error(
        stub.PlaceHold(pb.PlaceHoldRequest(asset_id=asset_id, owner="task:x"), metadata=ORCH),
        grpc.StatusCode.FAILED_PRECONDITION,
        "task:",
    )
    await expect_error(
        stub.ReleaseHold(pb.ReleaseHoldRequest(asset_id=asset_id, owner="nobody"), metadata=ORCH),
        grpc.StatusCode.NOT_FOUND,
        "audit-2026",
    )
    watcher = asyncio.create_task(deletion(stub, asset_id))
    await stub.ReleaseHold(
        pb.ReleaseHoldRequest(asset_id=asset_id, owner="audit-2026"), metadata=ORCH
    )
    gone, _ = await asyncio.wait_for(watcher, 10)
    assert gone.deletion_reason == "expired (ttl)"


async def test_force_deletes_a_held_asset_and_usage_follows_every_write(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    before = await stub.GetUsage(pb.GetUsageRequest(group="tag"), metadata=ORCH)
    made = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="u", value=pb.Value(text="12345"), tags=["usage-t"]),
        metadata=ORCH,
    )
    await stub.PlaceHold(pb.PlaceHoldRequest(asset_id=made.asset.id, owner="o"), metadata=ORCH)
    usage = await stub.GetUsage(pb.GetUsageRequest(group="tag", keys=["usage-t"]), metadata=ORCH)
    assert usage.count == before.count + 1 and usage.bytes == before.bytes + 5
    assert [(r.key, r.count, r.bytes) for r in usage.rows] == [("usage-t", 1, 5)]
    await stub.DeleteAsset(
        pb.DeleteAssetRequest(asset_id=made.asset.id, force=True), metadata=ADMIN
    )
    after = await stub.GetUsage(pb.GetUsageRequest(group="tag", keys=["usage-t"]), metadata=ORCH)
    assert after.count == before.count and [(r.count, r.bytes) for r in after.rows] == [(0, 0)]
    await expect_error(
        stub.SetExpiry(pb.SetExpiryRequest(asset_id=made.asset.id, ttl_seconds=5), metadata=ORCH),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_crash_during_expiry_loses_nothing_held_and_no_bytes_stay_unrecorded(
    tmp_path: Path,
) -> None:
    """Many expiring FILE assets, a third of them held; the server is SIGKILLed while it
    sweeps, then started again (with the sweep off) and checked against the disk."""
    imports = tmp_path / "imports"
    imports.mkdir()
    url = database_url_for(tmp_path)
    first = ServerProcess(tmp_path / "data", url, import_roots=[imports]).start()
    held: set[str] = set()
    try:
        async with grpc.aio.insecure_channel(first.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            for i in range(60):
                path = imports / f"f{i}.bin"
                path.write_bytes(f"bytes {i}".encode() * 100)
                made = await stub.RegisterFile(
                    pb.RegisterFileRequest(path=str(path), move=True, ttl_seconds=1)
                )
                if i % 3 == 0:
                    await stub.PlaceHold(pb.PlaceHoldRequest(asset_id=made.asset.id, owner="keep"))
                    held.add(made.asset.id)
    finally:
        first.stop()
    # The sweep removes a few per round, slowly enough to be cut in the middle.
    sweeper = ServerProcess(
        tmp_path / "data",
        url,
        extra_args=["--retention-check-interval", "0.05", "--retention-sweep-limit", "2"],
    )
    await asyncio.sleep(1.2)  # every asset has expired
    sweeper.start()
    for _ in range(2000):  # 20 s at most: killed as soon as the first removal is logged
        if any("expired (ttl)" in ln for ln in sweeper.log):
            break
        await asyncio.sleep(0.01)
    sweeper.kill()
    assert any("expired (ttl)" in line for line in sweeper.log), "".join(sweeper.log)

    args = ["--retention-check-interval", "1h", "--orphan-grace", "0"]
    with serving(ServerProcess(tmp_path / "data", url, extra_args=args)) as after:
        async with grpc.aio.insecure_channel(after.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            left = {a.id: a for a in await all_assets(stub)}
            assert held <= set(left), "a held asset was removed"
            assert len(left) < 60, "the sweep removed nothing before the crash"
            recorded = {Path(a.storage_path) for a in left.values()}
            on_disk = set(stored_files(tmp_path / "data"))
            assert on_disk == recorded  # no bytes without a record, no record without bytes
            for asset_id in held:
                chunks = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset_id))
                assert b"".join([c.chunk async for c in chunks])


# Two servers on one database need a replica set (MONGODB_URI); deselected and counted without.
@pytest.mark.requires("mongo")
async def test_two_servers_on_one_store_expire_each_asset_once(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    args = ["--retention-check-interval", "0.1", "--retention-sweep-limit", "3"]
    a = ServerProcess(tmp_path / "shared", url, extra_args=args).start()
    b = ServerProcess(tmp_path / "shared", url, extra_args=args).start()
    try:
        async with (
            grpc.aio.insecure_channel(a.address) as ca,
            grpc.aio.insecure_channel(b.address) as cb,
        ):
            via_a, via_b = pb_grpc.AssetServiceStub(ca), pb_grpc.AssetServiceStub(cb)
            ids = set()
            for i in range(20):
                stub = via_a if i % 2 else via_b
                made = await stub.CreateValueAsset(
                    pb.CreateValueAssetRequest(
                        label=f"v{i}", value=pb.Value(text="x"), ttl_seconds=1
                    )
                )
                ids.add(made.asset.id)
            for _ in range(150):  # 30 s at most
                if not await all_assets(via_a):
                    break
                await asyncio.sleep(0.2)
            assert not await all_assets(via_b)
    finally:
        a.stop()
        b.stop()
        drop_database_of(url)
    removed = [ln for ln in a.log + b.log if "expired (ttl)" in ln]
    assert sorted(ln.split()[5] for ln in removed) == sorted(ids)  # each once, by one server


async def test_the_sweep_counts_what_it_removed_by_reason(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    flags = ["--metrics-listen", "127.0.0.1:0", "--retention-check-interval", SWEEP]
    with serving(ServerProcess(tmp_path / "data", url, extra_args=flags)) as server:
        port = metrics_port(server)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            made = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="m", value=pb.Value(text="x"), ttl_seconds=1)
            )
            request = pb.WatchAssetRequest(asset_ids=[made.asset.id], follow=True)
            async for event in stub.WatchAsset(request, timeout=20):
                if event.type == pb.WATCH_EVENT_TYPE_DELETED:
                    break
        expired = scrape(port).get(
            "asset_service_assets_expired_total", {"reason": "expired (ttl)"}
        )
        assert expired == 1
    assert any(f"asset {made.asset.id} (m, 1 bytes) expired (ttl)" in ln for ln in server.log)


async def test_orphan_files_are_collected_a_bounded_number_at_a_time(tmp_path: Path) -> None:
    url = database_url_for(tmp_path)
    flags = ["--metrics-listen", "127.0.0.1:0", "--collect-interval", "0.3"]
    flags += ["--orphan-grace", "0", "--retention-sweep-limit", "1"]
    with serving(ServerProcess(tmp_path / "data", url, extra_args=flags)) as server:
        port = metrics_port(server)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            kept = await upload(stub, [b"kept bytes"], label="kept.bin")
            # What a crash between bytes and record leaves: files no record points at.
            orphans = []
            for i in range(3):
                folder = tmp_path / "data" / "uploads" / "2026-01-01" / str(uuid.uuid4())
                folder.mkdir(parents=True)
                (folder / f"o{i}.bin").write_bytes(b"orphan")
                orphans.append(folder / f"o{i}.bin")
            for _ in range(100):  # 10 s at most
                if not any(p.exists() for p in orphans):
                    break
                await asyncio.sleep(0.1)
            assert not any(p.exists() for p in orphans), "".join(server.log)
            assert await read_all(stub, kept.id) == b"kept bytes"
        reclaimed = scrape(port).get("asset_service_reclaimed_total", {"kind": "orphan_files"})
        assert reclaimed == 3
    counts = [ln for ln in server.log if "collected " in ln and "orphan file(s)" in ln]
    assert len(counts) == 3 and all("collected 1 orphan" in ln for ln in counts), counts


def test_the_python_client_sets_expiries_and_holds(server: ServerProcess) -> None:
    with AssetClient(server.address, timeout=30) as client:
        made = client.create_value("py", text="x", ttl_seconds=3600)
        assert made.expiry_rule == "ttl" and made.expires_at is not None
        never = client.set_expiry(made.id, clear=True)
        assert never.expiry_rule == "never" and never.expires_at is None
        held = client.place_hold(made.id, "py-test", "checking")
        assert [(h.owner, h.kind, h.reason) for h in held.holds] == [
            ("py-test", "EXPLICIT", "checking")
        ]
        with pytest.raises(FailedPreconditionError, match="py-test \\(checking\\)"):
            client.delete(made.id)
        gone = client.delete(made.id, force=True)
        assert gone.id == made.id
        with pytest.raises(NotFoundError):
            client.release_hold(made.id, "py-test")
