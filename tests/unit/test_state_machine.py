"""The state machine in-process: AssetManager over MemoryStore and LocalStorage, in milliseconds."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from asset_service.domain.errors import (
    AssetError,
    Conflict,
    CorruptBytes,
    FailedPrecondition,
    Held,
    HistoryGone,
    IntegrityError,
    InvalidArgument,
    KeyTaken,
    LeaseRanOut,
    LimitExceeded,
    ManifestBlocked,
    ManifestWaitTimeout,
    NotFound,
    Occupied,
    OutcomeUnknown,
    Overloaded,
    PermissionDenied,
    ResourceExhausted,
    SharedBytesGone,
    StorageFull,
    Timeout,
    TooLarge,
    Unavailable,
    Unverified,
)
from asset_service.domain.manager import AssetManager, Limits
from asset_service.domain.models import (
    Asset,
    AssetType,
    Status,
    UploadHeader,
    Value,
    ValueKind,
    new_asset_id,
)
from asset_service.domain.watch import Selector
from asset_service.security.errors import Unauthenticated
from asset_service.storage.local import LocalStorage
from asset_service.storage.manifests import LocalManifests
from asset_service.store.memory import MemoryStore
from asset_service.store.mongo._documents import DuplicateKey
from asset_service.store.mongo._store import _NothingToDelete as NothingToDelete
from tests.managers import running

MAX_UPLOAD = 1024


@dataclass
class World:
    store: MemoryStore
    manager: AssetManager
    root: Path
    raised: set[type[AssetError]] = field(default_factory=set)

    def stored_files(self) -> list[Path]:
        found = [*(self.root / "uploads").rglob("*"), *(self.root / "generated").rglob("*")]
        return sorted(p for p in found if p.is_file())

    def second_server(self) -> AssetManager:
        """Another server on the same database: its own locks, so only the store's
        conditional write stands between the two."""
        return AssetManager(self.store, LocalStorage(self.root), Limits())


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = MemoryStore()
    root = tmp_path / "blobs"
    manager = AssetManager(
        store, LocalStorage(root), Limits(max_upload_bytes=MAX_UPLOAD), LocalManifests(root)
    )
    async with running(manager):
        yield World(store, manager, root.resolve())


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def text(s: str) -> Value:
    return Value(ValueKind.TEXT, s.encode())


async def promise(w: World, type_: AssetType = AssetType.VALUE, task: str = "task-1") -> Asset:
    return await w.manager.create_pending(task, "out.txt", "", type_, ("t",))


# --- transitions -----------------------------------------------------------------------


async def test_a_value_promise_is_fulfilled_once(world: World) -> None:
    p = await promise(world)
    assert (p.status, p.type, p.created_by_task) == (Status.PENDING, AssetType.VALUE, "task-1")
    assert p.revision > 0
    value = Value(ValueKind.JSON, b'{"score": 0.93}')
    done = await world.manager.fulfill_with_value(
        p.id, value, hashlib.sha256(value.data).hexdigest()
    )
    assert done.status is Status.AVAILABLE and done.value == value
    assert done.media_type == "application/json", "a promise without a type takes its value's"
    assert (done.size_bytes, done.sha256) == (15, hashlib.sha256(value.data).hexdigest())
    assert done.revision > p.revision and done.created_at == p.created_at
    assert await world.manager.get(p.id) == done
    # An identical retry answers with the same record and writes nothing.
    assert await world.manager.fulfill_with_value(p.id, value, "") == done
    # Different content is refused, and the first content stays.
    with pytest.raises(FailedPrecondition, match="AVAILABLE; only a PENDING"):
        await world.manager.fulfill_with_value(p.id, text("other"), "")
    with pytest.raises(FailedPrecondition):
        await world.manager.fail(p.id, "too late")
    assert await world.manager.get(p.id) == done


async def test_a_failed_promise_stays_failed(world: World) -> None:
    p = await promise(world)
    failed = await world.manager.fail(p.id, "  worker crashed  ")
    assert failed.status is Status.FAILED and failed.failure_reason == "worker crashed"
    assert await world.manager.fail(p.id, "worker crashed") == failed, "same reason: idempotent"
    with pytest.raises(FailedPrecondition, match="FAILED \\(worker crashed\\)"):
        await world.manager.fail(p.id, "another reason")
    with pytest.raises(FailedPrecondition, match="worker crashed"):
        await world.manager.fulfill_with_value(p.id, text("late"), "")
    with pytest.raises(InvalidArgument, match="reason is required"):
        await world.manager.fail((await promise(world)).id, "   ")
    assert await world.manager.get(p.id) == failed


async def test_a_file_promise_fulfilled_by_upload_keeps_one_copy(world: World) -> None:
    p = await promise(world, AssetType.FILE, task="render-7")
    header = UploadHeader(pending_asset_id=p.id)
    done = await world.manager.upload(header, chunks(b"hello, ", b"world"))
    assert done.status is Status.AVAILABLE and done.size_bytes == 12
    assert done.storage_path.startswith(str(world.root / "generated" / "render-7"))
    assert Path(done.storage_path).read_bytes() == b"hello, world"
    assert await world.manager.upload(header, chunks(b"hello, world")) == done
    with pytest.raises(FailedPrecondition):
        await world.manager.upload(header, chunks(b"something else"))
    # Done is the answer, not "fulfil it the other way" (which would only lead there).
    with pytest.raises(FailedPrecondition, match="is AVAILABLE; only a PENDING asset"):
        await world.manager.fulfill_with_value(p.id, text("x"), "")
    assert world.stored_files() == [Path(done.storage_path)], "no second file, no leftovers"


def outcome(results: list[Asset | BaseException]) -> tuple[list[Asset], list[type]]:
    winners = [r for r in results if isinstance(r, Asset)]
    return winners, sorted({type(r) for r in results if not isinstance(r, Asset)}, key=str)


async def test_racing_fulfills_have_one_winner(world: World) -> None:
    p = await promise(world)
    results = await asyncio.gather(
        *(world.manager.fulfill_with_value(p.id, text(f"v{i}"), "") for i in range(20)),
        return_exceptions=True,
    )
    winners, losers = outcome(results)
    assert len(winners) == 1, results
    # One manager takes them in turn (its per-asset lock): each loser sees the winner's state.
    assert losers == [FailedPrecondition], results
    assert await world.manager.get(p.id) == winners[0]


async def test_fulfill_racing_fail_has_one_winner(world: World) -> None:
    p = await promise(world)
    m = world.manager
    results = await asyncio.gather(
        *(
            m.fulfill_with_value(p.id, text(f"v{i}"), "") if i % 2 else m.fail(p.id, f"r{i}")
            for i in range(20)
        ),
        return_exceptions=True,
    )
    winners, losers = outcome(results)
    assert len(winners) == 1, results
    assert losers == [FailedPrecondition], results
    assert await m.get(p.id) == winners[0]


async def test_two_servers_racing_are_decided_by_the_conditional_write(world: World) -> None:
    """Each server's in-process lock cannot see the other: the store's one winner shows."""
    p = await promise(world)
    servers = [world.manager, world.second_server()]
    results = await asyncio.gather(
        *(
            servers[i % 2].fulfill_with_value(p.id, text(f"v{i}"), "")
            if i % 4 < 2
            else servers[i % 2].fail(p.id, f"r{i}")
            for i in range(20)
        ),
        return_exceptions=True,
    )
    winners, losers = outcome(results)
    assert len(winners) == 1, results
    assert Conflict in losers, "the other server's first writer must lose in the store"
    assert set(losers) <= {FailedPrecondition, Conflict}, results
    conflict = next(r for r in results if isinstance(r, Conflict))
    assert p.id in conflict.message and "re-read" in conflict.message
    assert await world.manager.get(p.id) == winners[0]


async def test_delete_then_get_is_not_found(world: World) -> None:
    value = await world.manager.create_value("note", "", text("be brief"), ())
    file = await world.manager.upload(UploadHeader(label="a.bin"), chunks(b"abc"))
    gone = await world.manager.delete(value.id)
    assert gone.id == value.id and gone.revision > value.revision
    assert gone.value == value.value, "the last state is returned"
    gone_file = await world.manager.delete(file.id)
    assert not Path(gone_file.storage_path).exists() and world.stored_files() == []
    for asset_id in (value.id, file.id):
        with pytest.raises(NotFound, match=asset_id):
            await world.manager.get(asset_id)
        with pytest.raises(NotFound):
            await world.manager.delete(asset_id)


async def test_watch_sends_the_snapshot_then_every_change_in_revision_order(world: World) -> None:
    m = world.manager
    a, b, c = await promise(world), await promise(world), await promise(world)
    early = await m.fulfill_with_value(a.id, text("early"), "")
    stream = await m.watch([a.id, b.id, c.id], 0, follow=False)
    snapshot = [await anext(stream) for _ in range(3)]
    # The snapshot comes in revision order too: a changed last, so it comes last.
    assert [(e.kind, e.asset) for e in snapshot] == [
        ("SNAPSHOT", b),
        ("SNAPSHOT", c),
        ("SNAPSHOT", early),
    ]
    failed = await m.fail(b.id, "boom")
    deleted = await m.delete(c.id)
    async with asyncio.timeout(5):
        rest = [e async for e in stream]  # ends once every watched asset is terminal
    assert [(e.kind, e.asset.id, e.revision) for e in rest] == [
        ("CHANGED", b.id, failed.revision),
        ("DELETED", c.id, deleted.revision),
    ]
    revisions = [e.revision for e in snapshot + rest]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)


async def test_manifest_maps_available_inputs_to_files(world: World) -> None:
    v = await world.manager.create_value("cfg", "", Value(ValueKind.JSON, b"[1]"), ())
    f = await world.manager.upload(UploadHeader(label="in.csv"), chunks(b"a,b\n"))
    manifest = await world.manager.manifest({"config": v.id, "table": f.id}, {"k": 1})
    assert manifest.entries["table"] == f.storage_path
    assert Path(manifest.entries["config"]).read_bytes() == b"[1]"
    assert Path(manifest.path).name == "input_data.json"


# --- every domain error, reached through the manager --------------------------------------


async def expect(w: World, cls: type[AssetError], call: Awaitable[object]) -> AssetError:
    with pytest.raises(cls) as info:
        await call
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {info.value!r}"
    assert info.value.message
    w.raised.add(cls)
    return info.value


async def invalid_argument(w: World) -> None:
    await expect(w, InvalidArgument, w.manager.get("not-a-uuid"))
    await expect(
        w, InvalidArgument, w.manager.create_pending("bad id!", "x", "", AssetType.FILE, ())
    )


async def not_found(w: World) -> None:
    await expect(w, NotFound, w.manager.fail(new_asset_id(), "no such promise"))


async def failed_precondition(w: World) -> None:
    p = await promise(w, AssetType.FILE)
    await expect(w, FailedPrecondition, w.manager.read(p.id, 0, 0))


async def held(w: World) -> None:
    p = await promise(w)
    await w.manager.place_hold(p.id, "audit", "kept for review")
    err = await expect(w, Held, w.manager.delete(p.id))
    assert "audit (kept for review)" in err.message
    assert (await w.manager.delete(p.id, force=True)).id == p.id


async def manifest_blocked(w: World) -> None:
    p = await promise(w)
    err = await expect(w, ManifestBlocked, w.manager.manifest({"in": p.id}, {}))
    assert isinstance(err, ManifestBlocked)
    assert [(b.key, b.state) for b in err.blocking] == [("in", "PENDING")]


async def manifest_wait_timeout(w: World) -> None:
    p = await promise(w)
    wait = w.manager.manifest({"in": p.id}, {}, wait=True, wait_seconds=0.05)
    err = await expect(w, ManifestWaitTimeout, wait)
    assert isinstance(err, ManifestWaitTimeout)
    assert [(b.key, b.state) for b in err.blocking] == [("in", "PENDING")]


async def history_gone(w: World) -> None:
    w.manager.hub.history.max_bytes = 1  # keeps only the latest change
    first = await promise(w)
    await w.manager.delete((await promise(w)).id)
    # Older than the tombstones the store keeps: it cannot replay the deletion either.
    await w.store.sweep_tombstones(datetime.now(UTC) + timedelta(minutes=1))
    for _ in range(3):
        await promise(w)
    await asyncio.sleep(0)  # the hub publishes them
    for _ in range(100):
        if len(w.manager.hub.history) and w.manager.hub.history.floor != 0:
            break
        await asyncio.sleep(0.01)
    await expect(w, HistoryGone, w.manager.watch_selector(Selector(), first.revision))


async def conflict(w: World) -> None:
    p = await promise(w)
    results = await asyncio.gather(
        w.manager.fail(p.id, "a"), w.second_server().fail(p.id, "b"), return_exceptions=True
    )
    lost = next(r for r in results if isinstance(r, BaseException))

    async def reraise() -> None:
        raise lost

    await expect(w, Conflict, reraise())


async def permission_denied(w: World) -> None:
    # No import roots configured: no server-side path may be adopted.
    await expect(w, PermissionDenied, w.manager.register_file("/etc/hostname", "", "", (), False))


async def resource_exhausted(w: World) -> None:
    big = await w.manager.create_value("big", "", Value(ValueKind.BYTES, bytes(4 << 20)), ())
    await expect(w, ResourceExhausted, w.manager.batch_get([big.id]))


async def too_large(w: World) -> None:
    await expect(w, TooLarge, w.manager.upload(UploadHeader(label="x"), chunks(b"x" * 2000)))
    assert w.stored_files() == []


async def storage_full(w: World) -> None:
    async def full(asset: Asset, *, shared: bool = False) -> Asset:
        raise StorageFull("the metadata database's disk is full")

    w.store.insert = full  # type: ignore[method-assign]
    await expect(w, StorageFull, w.manager.upload(UploadHeader(label="x"), chunks(b"abc")))
    assert w.stored_files() == [], "a refused record write leaves no bytes behind"


async def integrity_error(w: World) -> None:
    p = await promise(w)
    await expect(w, IntegrityError, w.manager.fulfill_with_value(p.id, text("x"), "0" * 64))
    assert (await w.manager.get(p.id)).status is Status.PENDING


async def corrupt_bytes(w: World) -> None:
    stored = await w.manager.upload(UploadHeader(label="x"), chunks(b"abc"))
    Path(stored.storage_path).write_bytes(b"abd")  # the same size, other bytes

    async def read_all() -> bytes:
        return b"".join([c async for c in await w.manager.read(stored.id, 0, 0)])

    found = await expect(w, CorruptBytes, read_all())
    assert isinstance(found, CorruptBytes) and found.offset == 0
    assert stored.id in found.message and "offset 0" in found.message
    marked = await w.manager.get(stored.id)
    assert marked.corrupt_reason and marked.updated_by == "integrity-check"
    # From now on refused at once, before any byte is read.
    refused = await expect(w, IntegrityError, read_all())
    assert "is corrupt" in refused.message


async def unavailable(w: World) -> None:
    p = await promise(w)
    await w.store.close()
    await expect(w, Unavailable, w.manager.get(p.id))
    await w.store.open()
    assert await w.manager.get(p.id) == p, "records survive a reconnect"


async def outcome_unknown(w: World) -> None:
    applied = w.store.insert

    async def lost_reply(asset: Asset, *, shared: bool = False) -> Asset:
        await applied(asset, shared=shared)
        await w.store.close()  # the store goes away before it answers
        raise Unavailable("connection reset")

    w.store.insert = lost_reply  # type: ignore[method-assign]
    await expect(w, OutcomeUnknown, w.manager.upload(UploadHeader(label="x"), chunks(b"abc")))
    assert len(w.stored_files()) == 1, "bytes a record may point at are kept"
    await w.store.open()


ERROR_CASES: dict[type[AssetError], Callable[[World], Awaitable[None]]] = {
    InvalidArgument: invalid_argument,
    NotFound: not_found,
    FailedPrecondition: failed_precondition,
    Held: held,
    ManifestBlocked: manifest_blocked,
    ManifestWaitTimeout: manifest_wait_timeout,
    HistoryGone: history_gone,
    Conflict: conflict,
    PermissionDenied: permission_denied,
    ResourceExhausted: resource_exhausted,
    TooLarge: too_large,
    StorageFull: storage_full,
    IntegrityError: integrity_error,
    CorruptBytes: corrupt_bytes,
    Unavailable: unavailable,
    OutcomeUnknown: outcome_unknown,
}
# Raised by the servicer around the domain; tests/e2e/test_limits.py reaches them.
RAISED_OUTSIDE_THE_DOMAIN = {
    LimitExceeded: "--max-concurrent-uploads is counted by the servicer",
    Timeout: "--upload-idle-timeout is enforced by the servicer",
    Unauthenticated: "credentials are checked by the security interceptor",
    DuplicateKey: "MongoStore's group writer: a Conflict (tests/unit/test_mongo_group_writes.py)",
    NothingToDelete: "MongoStore's group writer: delete() returns None for it",
    Overloaded: "MongoStore's group writer queue (tests/unit/test_mongo_backpressure.py)",
    Unverified: "a storage's check_many verdict, which the domain verifies (never raised)",
    LeaseRanOut: "a store's verdict on a lease, which the manager turns into FailedPrecondition",
    KeyTaken: "a store's verdict on a keyed insert: get-or-create reads the key's holder again "
    "(tests/contract/test_key_contract.py)",
    Occupied: "a local storage's verdict on a commit, which the Committer settles by the "
    "records (tests/unit/test_commit_over_leftovers.py)",
    SharedBytesGone: "a store's verdict on a shared write: the upload keeps or sends its own "
    "bytes (tests/contract/test_shared_bytes_contract.py, tests/contract/test_s3_shared_bytes.py)",
}


@pytest.mark.parametrize("cls", list(ERROR_CASES), ids=lambda c: c.__name__)
async def test_every_domain_error_is_reached(world: World, cls: type[AssetError]) -> None:
    await ERROR_CASES[cls](world)
    assert cls in world.raised


def test_the_error_table_names_every_error_class() -> None:
    def subclasses(cls: type[AssetError]) -> set[type[AssetError]]:
        return {s for c in cls.__subclasses__() for s in {c, *subclasses(c)}}

    assert subclasses(AssetError) == set(ERROR_CASES) | set(RAISED_OUTSIDE_THE_DOMAIN)
