"""End to end: uploads, promises, fulfillment, failures, values, manifests and races."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from grpc_status import rpc_status

from asset_service import allocator
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.storage import sink
from tests.e2e.helpers import (
    MiB,
    all_assets,
    digest_of,
    expect_error,
    pattern_chunks,
    pending_asset,
    read_all,
    stored_files,
    upload,
    value_asset,
)
from tests.serverproc import ServerProcess, database_url_for, serving

PENDING, AVAILABLE, FAILED = (
    pb.ASSET_STATUS_PENDING,
    pb.ASSET_STATUS_AVAILABLE,
    pb.ASSET_STATUS_FAILED,
)


async def test_upload_64mib_in_chunks(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess
) -> None:
    size = 64 * MiB
    sha, _ = digest_of(pattern_chunks(size))
    asset = await upload(
        stub,
        pattern_chunks(size),
        label="Input_Video.mp4",
        media_type="video/mp4",
        tags=["raw-upload", "user-id-5"],
        expected_size_bytes=size,
        expected_sha256=sha,
    )
    assert asset.status == AVAILABLE
    assert asset.type == pb.ASSET_TYPE_FILE
    assert (asset.size_bytes, asset.sha256) == (size, sha)
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    path = Path(asset.storage_path)
    assert path.is_relative_to(server.root / "uploads" / today)
    assert path.stat().st_size == size
    assert digest_of([path.read_bytes()])[0] == sha
    assert hashlib.sha256(await read_all(stub, asset.id)).hexdigest() == sha
    got = (await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id))).asset
    assert list(got.tags) == ["raw-upload", "user-id-5"] and got.media_type == "video/mp4"


# gRPC's receive window (the bytes a client may send before the servicer reads them) is
# max(4 MiB, 2 x its BDP estimate) and grows while an upload runs; the server, started with
# GRPC_TRACE=flowctl, logs each size it announces.
WINDOW_ANNOUNCED = re.compile(r"UPDATE SETTING INITIAL_WINDOW_SIZE from \d+ to (\d+)")


def upload_holds(window: int) -> dict[str, int]:
    """What one upload may hold in the server by design, whatever the file's size."""
    return {
        "gRPC receive window": window,
        # the message gRPC is assembling (1 MiB chunks), and protobuf's parsed copy of it
        "message in transit": 2 * MiB,
        # chunks queued for the sink's thread, the one it is hashing and copying counted in
        "sink queue": sink.QUEUE_BYTES + MiB,
        "direct-I/O buffers": sink.DIRECT_BUFFERS * sink.DIRECT_BLOCK,
        # freed heap glibc keeps instead of giving it back (M_TRIM_THRESHOLD, allocator.py)
        "glibc trim threshold": allocator.TRIM_THRESHOLD,
    }


async def test_upload_memory_stays_flat(tmp_path: Path) -> None:
    """A 512 MiB upload raises the server's peak RSS by less than what it holds by design.

    The peak is the kernel's own high-water mark (VmHWM, reset after a 1 MiB warm-up has
    loaded every code path), so no short peak goes unseen. The bound is upload_holds(): the
    server's own buffers (their constants imported), the largest receive window gRPC
    announced, and glibc's trim threshold: 29-41 MiB with the 4-16 MiB windows seen, where
    12-23 MiB is measured (also with the two cores saturated). A server that buffered the
    file fails by some 490 MiB; one that kept 32 MiB of it (a sixteenth) fails too.

    One malloc arena (MALLOC_ARENA_MAX=1): with glibc's default, each thread that
    allocates (gRPC's pollers, the sinks' threads) may get an arena of its own, each keeping
    up to the trim threshold of freed memory, and how many do depends on scheduling: 25-59
    MiB of noise that says nothing about what the server holds.
    """
    url = database_url_for(tmp_path)
    # (The trace is written at INFO: whatever verbosity the environment asks for.)
    env = {"MALLOC_ARENA_MAX": "1", "GRPC_TRACE": "flowctl", "GRPC_VERBOSITY": "INFO"}
    with serving(ServerProcess(tmp_path / "data", url, env=env)) as proc:
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            warmup = await upload(stub, pattern_chunks(MiB), label="warmup.bin")
            baseline = proc.rss_bytes()
            proc.reset_peak_rss()
            big = await upload(stub, pattern_chunks(512 * MiB), label="big.bin", timeout=300)
            held = proc.peak_rss_bytes() - baseline
            assert big.size_bytes == 512 * MiB
            for asset in (warmup, big):
                await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id))
    windows = [int(m.group(1)) for m in map(WINDOW_ANNOUNCED.search, proc.log) if m]
    assert windows, "no window announced in the gRPC trace: the bound cannot be derived"
    holds = upload_holds(max(windows))
    shown = ", ".join(f"{k} {v / MiB:g}" for k, v in holds.items())
    print(f"\nupload memory: {held / MiB:.1f} MiB held; bound {sum(holds.values()) / MiB:g} MiB")
    assert held < sum(holds.values()), (
        f"server RSS grew by {held / MiB:.1f} MiB during a 512 MiB upload; it may hold "
        f"{sum(holds.values()) / MiB:g} MiB ({shown})"
    )


async def _watch_events(
    stub: pb_grpc.AssetServiceStub, ids: list[str], started: asyncio.Event, **kw: object
) -> list[pb.WatchAssetResponse]:
    events = []
    call = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=ids, **kw), timeout=30)  # type: ignore[arg-type]
    async for event in call:
        events.append(event)
        started.set()
    return events


async def test_watcher_sees_pending_then_available_and_file_is_moved(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path
) -> None:
    pending = await pending_asset(
        stub, "frames.tar", task_id="task-42", media_type="application/x-tar"
    )
    assert pending.status == PENDING and pending.storage_path == ""
    started = asyncio.Event()
    watcher = asyncio.create_task(_watch_events(stub, [pending.id], started))
    await asyncio.wait_for(started.wait(), 10)  # the snapshot arrived: the watch is live

    source = import_root / "out" / "frames.tar"
    source.parent.mkdir()
    source.write_bytes(b"frame data" * 1000)
    done = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=pending.id, source_path=str(source))
    )
    events = await asyncio.wait_for(watcher, 10)

    assert [(e.type, e.asset.status) for e in events] == [
        (pb.WATCH_EVENT_TYPE_SNAPSHOT, PENDING),
        (pb.WATCH_EVENT_TYPE_CHANGED, AVAILABLE),
    ]
    assert events[0].revision < events[1].revision == done.asset.revision
    target = Path(done.asset.storage_path)
    assert target.is_relative_to(server.root / "generated" / "task-42")
    assert target.read_bytes() == b"frame data" * 1000
    assert not source.exists(), "the worker's file should have been moved"
    assert done.asset.sha256 == hashlib.sha256(b"frame data" * 1000).hexdigest()


async def test_watch_many_ids_orders_snapshot_and_changes(stub: pb_grpc.AssetServiceStub) -> None:
    a = await pending_asset(stub, "a", type=pb.ASSET_TYPE_VALUE)
    b = await pending_asset(stub, "b", type=pb.ASSET_TYPE_VALUE)
    started = asyncio.Event()
    watcher = asyncio.create_task(_watch_events(stub, [b.id, a.id], started))
    await asyncio.wait_for(started.wait(), 10)
    await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=b.id, value=pb.Value(text="B")))
    await stub.FailAsset(pb.FailAssetRequest(asset_id=a.id, reason="crashed"))
    events = await asyncio.wait_for(watcher, 10)
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    assert a.media_type == "" and events[-2].asset.media_type == "text/plain"
    assert [(e.asset.id, e.asset.status) for e in events][-2:] == [
        (b.id, AVAILABLE),
        (a.id, FAILED),
    ]
    assert {e.asset.id for e in events if e.type == pb.WATCH_EVENT_TYPE_SNAPSHOT} == {a.id, b.id}


async def test_fail_is_seen_by_watchers_and_blocks_manifests(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    failing = await pending_asset(stub, "x.mp4", task_id="t1")
    waiting = await pending_asset(stub, "y.mp4", task_id="t1")
    ready = await value_asset(stub, "n", text="1")
    watchers = []
    for _ in range(3):
        started = asyncio.Event()
        watchers.append(asyncio.create_task(_watch_events(stub, [failing.id], started)))
        await asyncio.wait_for(started.wait(), 10)
    failed = await stub.FailAsset(
        pb.FailAssetRequest(asset_id=failing.id, reason="ffmpeg exited 1")
    )
    assert failed.asset.status == FAILED and failed.asset.failure_reason == "ffmpeg exited 1"
    for events in await asyncio.gather(*watchers):
        assert [e.asset.status for e in events] == [PENDING, FAILED]
        assert events[-1].asset.failure_reason == "ffmpeg exited 1"

    err = await expect_error(
        stub.GetManifest(
            pb.GetManifestRequest(
                asset_mappings={"video": failing.id, "audio": waiting.id, "n": ready.id}
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"video={failing.id} is FAILED (ffmpeg exited 1)",
        f"audio={waiting.id} is PENDING",
    )
    assert ready.id not in (err.details() or "")
    status = rpc_status.from_call(err)
    assert status is not None
    from google.rpc import error_details_pb2

    detail = error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(detail)
    assert {(v.subject, v.type) for v in detail.violations} == {
        (f"assets/{failing.id}", "FAILED"),
        (f"assets/{waiting.id}", "PENDING"),
    }


async def test_manifest_bridges_values_to_files(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess
) -> None:
    text = await value_asset(stub, "prompt", text="héllo")
    doc = await value_asset(stub, "cfg", json='{"fps": 24}')
    raw = await value_asset(stub, "blob", data=b"\x00\x01\xff")
    video = await upload(stub, [b"v" * 1000], label="clip.mp4")
    assert (text.media_type, doc.media_type, raw.media_type) == (
        "text/plain",
        "application/json",
        "application/octet-stream",
    )
    config = struct_pb2.Struct()
    config.update({"threshold": 0.5, "mode": "fast", "nested": {"k": [1, 2]}})
    response = await stub.GetManifest(
        pb.GetManifestRequest(
            asset_mappings={"prompt": text.id, "cfg": doc.id, "blob": raw.id, "video": video.id},
            config_params=config,
        )
    )
    manifest_path = Path(response.manifest_path)
    assert manifest_path.is_absolute() and manifest_path.name == "input_data.json"
    assert manifest_path.is_relative_to(server.root / "tmp")
    raw_text = manifest_path.read_text()
    body = json.loads(raw_text)
    assert body["config_params"] == {"threshold": 0.5, "mode": "fast", "nested": {"k": [1, 2]}}
    assert '"k": [\n        1,\n        2\n      ]' in raw_text  # ints stay ints, not 1.0
    inputs = body["inputs"]
    assert inputs == dict(response.entries)
    expected = {
        "prompt": "héllo".encode(),
        "cfg": b'{"fps": 24}',
        "blob": b"\x00\x01\xff",
        "video": b"v" * 1000,
    }
    for key, content in expected.items():
        path = Path(inputs[key])
        assert path.is_absolute() and path.exists(), key
        assert path.read_bytes() == content, key
    assert Path(inputs["prompt"]).suffix == ".txt"
    assert Path(inputs["cfg"]).suffix == ".json"
    assert Path(inputs["video"]) == Path(video.storage_path)


async def test_twenty_racing_transitions_have_one_winner(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path
) -> None:
    asset = await pending_asset(stub, "out.bin", task_id="race")
    sources = []
    calls = []
    for i in range(20):
        if i % 2 == 0:
            src = import_root / f"candidate-{i}.bin"
            src.write_bytes(f"candidate {i}".encode())
            sources.append(src)
            calls.append(
                stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=asset.id, source_path=str(src)))
            )
        else:
            calls.append(
                stub.FailAsset(pb.FailAssetRequest(asset_id=asset.id, reason=f"worker {i} gave up"))
            )
    results = await asyncio.gather(*calls, return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1, results
    assert len(losers) == 19
    final = (await stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id))).asset
    # One server takes the calls on an asset in turn (its per-asset lock): every loser finds
    # the winner's state. ABORTED is for a write lost to another server, not seen here.
    state = pb.AssetStatus.Name(final.status).removeprefix("ASSET_STATUS_")
    for err in losers:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        assert f"asset {asset.id} is {state}" in (err.details() or ""), err.details()
    assert final.status == winners[0].asset.status
    assert final.revision == winners[0].asset.revision == asset.revision + 1
    generated = [p for p in stored_files(server.root) if "generated" in p.parts]
    if final.status == AVAILABLE:
        assert generated == [Path(final.storage_path)]
        assert sum(not s.exists() for s in sources) == 1  # only the winner's file moved
    else:
        assert generated == [] and all(s.exists() for s in sources)


async def test_value_race_and_idempotent_retries(
    stub: pb_grpc.AssetServiceStub, import_root: Path, server: ServerProcess
) -> None:
    asset = await pending_asset(stub, "v", type=pb.ASSET_TYPE_VALUE)
    results = await asyncio.gather(
        *(
            stub.FulfillAsset(
                pb.FulfillAssetRequest(asset_id=asset.id, value=pb.Value(text=f"answer {i}"))
            )
            for i in range(20)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    won = winners[0].asset
    again = await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=asset.id, value=won.value))
    assert again.asset == won  # same result, same revision: nothing written

    # A retried path fulfill (the file was already moved) returns the same record.
    file_asset = await pending_asset(stub, "f.txt")
    src = import_root / "f.txt"
    src.write_text("content")
    first = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=file_asset.id, source_path=str(src))
    )
    retry = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=file_asset.id, source_path=str(src))
    )
    assert retry.asset == first.asset
    # The same content uploaded again as the fulfillment: same record, no second file.
    replay = await upload(stub, [b"content"], pending_asset_id=file_asset.id)
    assert replay == first.asset
    generated = [p for p in stored_files(server.root) if "generated" in p.parts]
    assert generated == [Path(first.asset.storage_path)]
    # Failing with the same reason twice is idempotent too.
    other = await pending_asset(stub, "g")
    f1 = await stub.FailAsset(pb.FailAssetRequest(asset_id=other.id, reason="boom"))
    f2 = await stub.FailAsset(pb.FailAssetRequest(asset_id=other.id, reason="boom"))
    assert f1.asset == f2.asset


async def test_upload_fulfills_pending_and_register_file(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, import_root: Path
) -> None:
    pending = await pending_asset(stub, "out.mp4", task_id="enc", media_type="video/mp4")
    done = await upload(stub, [b"a" * 10, b"b" * 10], pending_asset_id=pending.id)
    assert done.id == pending.id and done.status == AVAILABLE and done.size_bytes == 20
    assert Path(done.storage_path).is_relative_to(server.root / "generated" / "enc")
    assert await read_all(stub, done.id) == b"a" * 10 + b"b" * 10

    src = import_root / "seed.csv"
    src.write_text("a,b\n1,2\n")
    reg = (
        await stub.RegisterFile(pb.RegisterFileRequest(path=str(src), media_type="text/csv"))
    ).asset
    assert reg.label == "seed.csv" and reg.status == AVAILABLE and src.exists()  # copied
    assert Path(reg.storage_path).read_text() == "a,b\n1,2\n"
    moved = (
        await stub.RegisterFile(pb.RegisterFileRequest(path=str(src), label="moved.csv", move=True))
    ).asset
    assert not src.exists() and Path(moved.storage_path).read_text() == "a,b\n1,2\n"


async def test_list_filters_and_pages(stub: pb_grpc.AssetServiceStub) -> None:
    ids = []
    for i in range(7):
        tags = ["batch"] + (["even"] if i % 2 == 0 else [])
        a = await pending_asset(stub, f"a{i}", task_id=f"t{i % 2}", tags=tags)
        ids.append(a.id)
    await stub.FailAsset(pb.FailAssetRequest(asset_id=ids[0], reason="x"))
    seen, token = [], ""
    while True:
        page = await stub.ListAssets(
            pb.ListAssetsRequest(tags=["batch"], page_size=3, page_token=token)
        )
        assert len(page.assets) <= 3
        seen += [a.id for a in page.assets]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    evens = await stub.ListAssets(pb.ListAssetsRequest(tags=["batch", "even"]))
    assert [a.id for a in evens.assets] == ids[0::2]
    pend_t0 = await stub.ListAssets(pb.ListAssetsRequest(created_by_task="t0", status=PENDING))
    assert [a.id for a in pend_t0.assets] == ids[2::2]
    by_label = await stub.ListAssets(pb.ListAssetsRequest(label="a3"))
    assert [a.id for a in by_label.assets] == [ids[3]]
    await expect_error(
        stub.ListAssets(pb.ListAssetsRequest(page_token="garbage")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    batch = await stub.BatchGetAssets(pb.BatchGetAssetsRequest(asset_ids=[ids[3], ids[1]]))
    assert [a.id for a in batch.assets] == [ids[3], ids[1]]


async def test_list_then_watch_from_the_list_revision_misses_and_doubles_nothing(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    """The informer pattern over ids: what changed after the listing (even before the
    watch began) arrives once; what did not change does not arrive again."""
    fields = {"task_id": "inf", "type": pb.ASSET_TYPE_VALUE, "tags": ["informer"]}
    ids = [(await pending_asset(stub, f"o{i}", **fields)).id for i in range(3)]
    listed = await stub.ListAssets(pb.ListAssetsRequest(tags=["informer"]))
    assert [a.id for a in listed.assets] == ids
    assert listed.revision == max(a.revision for a in listed.assets)
    await stub.FulfillAsset(pb.FulfillAssetRequest(asset_id=ids[0], value=pb.Value(text="x")))
    watch = stub.WatchAsset(
        pb.WatchAssetRequest(asset_ids=ids, after_revision=listed.revision, follow=True)
    )
    try:
        first = await watch.read()
        assert (first.type, first.asset.id, first.asset.status) == (  # type: ignore[union-attr]
            pb.WATCH_EVENT_TYPE_SNAPSHOT,
            ids[0],
            pb.ASSET_STATUS_AVAILABLE,
        )
        await stub.FailAsset(pb.FailAssetRequest(asset_id=ids[1], reason="no"))
        second = await watch.read()
        assert (second.type, second.asset.id, second.asset.status) == (  # type: ignore[union-attr]
            pb.WATCH_EVENT_TYPE_CHANGED,
            ids[1],
            pb.ASSET_STATUS_FAILED,
        )
        assert second.revision > first.revision > listed.revision  # type: ignore[union-attr]
    finally:
        watch.cancel()


async def test_delete_removes_record_and_bytes_and_tells_watchers(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess
) -> None:
    asset = await upload(stub, [b"bytes"], label="gone.bin")
    pending = await pending_asset(stub, "p")
    started = asyncio.Event()
    watcher = asyncio.create_task(_watch_events(stub, [pending.id], started))
    await asyncio.wait_for(started.wait(), 10)
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=pending.id))
    events = await asyncio.wait_for(watcher, 10)
    assert events[-1].type == pb.WATCH_EVENT_TYPE_DELETED and events[-1].asset.id == pending.id
    deleted = await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id))
    assert deleted.asset.id == asset.id
    assert not Path(asset.storage_path).exists()
    assert stored_files(server.root) == []
    assert await all_assets(stub) == []
    await expect_error(
        stub.GetAsset(pb.GetAssetRequest(asset_id=asset.id)), grpc.StatusCode.NOT_FOUND, asset.id
    )
