"""The BlobStorage contract, run over every backend in tests/contract/blob_backends.py."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from asset_service.domain import keys, recovery
from asset_service.domain.errors import (
    Conflict,
    CorruptBytes,
    IntegrityError,
    InvalidArgument,
    NotFound,
    Occupied,
    PermissionDenied,
    SharedBytesGone,
    Unavailable,
    Unverified,
)
from asset_service.domain.models import BLOCK_BYTES, BlockSums
from asset_service.domain.ports import BlobStorage, StagingWriter
from asset_service.storage.blocks import sums_of
from tests.contract.blob_backends import (
    GRACE_SECONDS,
    BlobBackend,
    blob_backend,
    blob_backend_names,
)

ID = "5b0e4f0e-0000-4000-8000-000000000000"
OTHER = "5b0e4f0e-0000-4000-8000-0000000000ff"
DAY = datetime(2026, 1, 2, tzinfo=UTC)
OLD = GRACE_SECONDS * 10


@pytest.fixture(params=blob_backend_names())
async def blob(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobBackend]:
    async with blob_backend(request.param, tmp_path, request) as backend:
        yield backend


async def written(
    storage: BlobStorage, data: bytes, key: str, finish: bool = True, replace: bool = False
) -> str:
    """Stream `data` in uneven chunks, commit it at `key`; the storage path. With
    `replace`, over bytes no record points at (as the domain does after Occupied)."""
    writer = storage.new_writer()
    for start in range(0, len(data), 7000):
        await writer.write(data[start : start + 7000])
    await writer.seal()
    path = await (replacing(writer, key) if replace else writer.commit(key))
    if finish:
        await writer.finish()
    return path


async def replacing(writer: StagingWriter, key: str) -> str:
    """commit(key) over a crash leftover no record points at: replaced at once where live
    commits hold their key (through Occupied), else once it is past the grace."""
    try:
        return await writer.commit(key)
    except Occupied as occupied:
        return await occupied.replace()


async def content(
    storage: BlobStorage, path: str, size: int, offset: int = 0, limit: int = 0
) -> bytes:
    chunks = await storage.read(path, size, offset, limit, 4096)
    parts = [c async for c in chunks]
    assert all(len(c) <= 4096 for c in parts), "chunks must respect chunk_size"
    return b"".join(parts)


async def test_written_bytes_read_back_whole_and_in_ranges(blob: BlobBackend) -> None:
    storage = await blob.start()
    data = bytes(range(256)) * 100  # 25,600 bytes: several chunks each way
    writer = storage.new_writer()
    for start in range(0, len(data), 7000):
        await writer.write(data[start : start + 7000])
    await writer.seal()
    assert (writer.size_bytes, writer.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    path = await writer.commit(keys.upload_key(ID, "a.bin", DAY))
    await writer.finish()
    await writer.rollback()  # settled: a late rollback must not remove committed bytes
    writer.discard()
    await storage.check(path, len(data))
    assert await content(storage, path, len(data)) == data
    assert await content(storage, path, len(data), 5, 10) == data[5:15]
    assert await content(storage, path, len(data), 25_000) == data[25_000:]
    assert await content(storage, path, len(data), 25_590, 100) == data[25_590:]
    assert await content(storage, path, len(data), 4096, 4096) == data[4096:8192]


async def test_an_empty_blob_is_stored_and_read(blob: BlobBackend) -> None:
    storage = await blob.start()
    path = await written(storage, b"", keys.upload_key(ID, "empty", DAY))
    await storage.check(path, 0)
    assert await content(storage, path, 0) == b""
    with pytest.raises(IntegrityError):
        await storage.check(path, 1)


async def test_a_commit_never_overwrites_and_the_first_bytes_survive(blob: BlobBackend) -> None:
    storage = await blob.start()
    key = keys.generated_key("task", ID, "out.bin")
    first, second = storage.new_writer(), storage.new_writer()
    for writer, data in ((first, b"first"), (second, b"second!")):
        await writer.write(data)
        await writer.seal()
    path = await first.commit(key)
    with pytest.raises(Conflict, match="another request"):
        await second.commit(key)  # a racing server's commit of the same asset
    await second.rollback()  # the loser's rollback must not take the winner's bytes
    await first.finish()
    assert await content(storage, path, 5) == b"first"
    # Bytes left by a crash long ago are replaced, not a reason to refuse forever.
    await blob.backdate(path, OLD)
    assert await written(storage, b"third", key, replace=True) == path
    assert await content(storage, path, 5) == b"third"
    assert await blob.staged() == 0, "no staging left behind by any of the three"


# Over two object-store parts (8 MiB each), so a writer opened for its key streams them
# there as a multipart upload.
KEYED_DATA = os.urandom(2 * 8 * 1024 * 1024 + 5)


async def keyed(storage: BlobStorage, data: bytes, key: str) -> StagingWriter:
    """A writer opened for `key`, `data` written in 1 MiB pieces and sealed."""
    writer = storage.new_writer(key)
    for start in range(0, len(data), 1 << 20):
        await writer.write(data[start : start + (1 << 20)])
    await writer.seal()
    return writer


async def whole(storage: BlobStorage, path: str, expected: bytes) -> bytes:
    """All the bytes at `path`, read checked against the block sums of `expected`."""
    chunks = await storage.read(path, len(expected), 0, 0, 1 << 20, sums_of(expected))
    return b"".join([c async for c in chunks])


async def test_a_writer_opened_for_its_key_commits_there_only_and_never_over_another(
    blob: BlobBackend,
) -> None:
    storage = await blob.start()
    key = keys.upload_key(ID, "keyed.bin", DAY)
    writer = storage.new_writer(key)
    await writer.write(KEYED_DATA[: 9 << 20])
    assert await blob.staged() == 1, "one blob on its way (an object store: at its key)"
    await writer.write(KEYED_DATA[9 << 20 :])
    await writer.seal()
    assert (writer.size_bytes, writer.sha256) == (
        len(KEYED_DATA),
        hashlib.sha256(KEYED_DATA).hexdigest(),
    )
    with pytest.raises(ValueError, match="cannot commit at"):
        await writer.commit(keys.upload_key(OTHER, "keyed.bin", DAY))
    path = await writer.commit(key)
    await writer.finish()
    assert await blob.staged() == 0
    assert (
        await content(storage, path, len(KEYED_DATA), 8 << 20, 10)
        == KEYED_DATA[8 << 20 : (8 << 20) + 10]
    )
    # A rival for the same key (a racing server fulfilling the same promise) loses whole.
    rival = await keyed(storage, KEYED_DATA[::-1], key)
    with pytest.raises(Conflict, match="another request"):
        await rival.commit(key)
    await rival.rollback()
    assert await blob.staged() == 0, "the loser leaves nothing behind"
    assert await whole(storage, path, KEYED_DATA) == KEYED_DATA
    # Bytes left by a crash long ago are replaced, as by any commit.
    await blob.backdate(path, OLD)
    late = await keyed(storage, KEYED_DATA[::-1], key)
    assert await replacing(late, key) == path
    await late.finish()
    assert await whole(storage, path, KEYED_DATA[::-1]) == KEYED_DATA[::-1]
    assert await blob.staged() == 0


async def test_a_late_rollback_never_removes_bytes_that_replaced_its_own(blob: BlobBackend) -> None:
    storage = await blob.start()
    key = keys.upload_key(ID, "x", DAY)
    stale = storage.new_writer()  # its record write hung: settled only much later
    await stale.write(b"stale")
    await stale.seal()
    path = await stale.commit(key)
    await blob.backdate(path, OLD)
    if blob.holds_commits:
        # A live commit is never replaced, however old: the rival waits for its end.
        rival = storage.new_writer()
        await rival.seal()
        with pytest.raises(Conflict, match="another request") as refused:
            await rival.commit(key)
        assert not isinstance(refused.value, Occupied), "a live commit is not a leftover"
        await rival.rollback()
        await stale.rollback()
        with pytest.raises(IntegrityError):
            await storage.check(path, 5)
        return
    assert await written(storage, b"newer", key) == path
    await stale.rollback()
    assert await content(storage, path, 5) == b"newer"


async def test_a_dead_commits_bytes_are_replaced_at_once_where_commits_hold_their_key(
    blob: BlobBackend,
) -> None:
    """Bytes a commit left when its process died (abandon: its hold ends, as at a death),
    young: Occupied where live commits hold their key, and replaced by the caller's
    replace(); rolled back, the replacement gives the name its old bytes back. Elsewhere
    a plain Conflict until the orphan grace has passed."""
    storage = await blob.start()
    key = keys.generated_key("task", ID, "out.bin")
    dead = storage.new_writer()
    await dead.write(b"half-made")
    await dead.seal()
    path = await dead.commit(key)
    dead.abandon()
    retry = storage.new_writer()
    await retry.write(b"retried")
    await retry.seal()
    if not blob.holds_commits:
        with pytest.raises(Conflict, match="another request") as refused:
            await retry.commit(key)
        assert not isinstance(refused.value, Occupied)
        await retry.rollback()
        return
    with pytest.raises(Occupied, match="another request") as occupied:
        await retry.commit(key)
    assert occupied.value.storage_path == path
    # Until replace() (or the end of the blob), the retry holds the key.
    rival = storage.new_writer()
    await rival.seal()
    with pytest.raises(Conflict) as refused:
        await rival.commit(key)
    assert not isinstance(refused.value, Occupied)
    await rival.rollback()
    assert await occupied.value.replace() == path
    assert await content(storage, path, 7) == b"retried"
    await retry.rollback()  # its record write failed: the occupant comes back
    assert await content(storage, path, 9) == b"half-made"
    assert await written(storage, b"again", key, replace=True) == path
    assert await content(storage, path, 5) == b"again"
    assert await blob.staged() == 0, "the set-aside bytes went with finish()"


async def test_rollback_after_commit_removes_the_bytes(blob: BlobBackend) -> None:
    storage = await blob.start()
    key = keys.upload_key(ID, "x", DAY)
    writer = storage.new_writer()
    await writer.write(b"doomed")
    await writer.seal()
    path = await writer.commit(key)
    await storage.check(path, 6)
    await writer.rollback()
    with pytest.raises(IntegrityError):
        await storage.check(path, 6)
    with pytest.raises(IntegrityError):
        await storage.read(path, 6, 0, 0, 4096)
    assert await written(storage, b"again", key) == path, "the key is free at once"
    # discard() is the same undo without awaiting (a cancelled request unwinding).
    other = storage.new_writer()
    await other.write(b"cancelled")
    await other.seal()
    other_path = await other.commit(keys.upload_key(OTHER, "x", DAY))
    other.discard()
    with pytest.raises(IntegrityError):
        await storage.check(other_path, 9)
    assert await content(storage, path, 5) == b"again"


async def test_discard_before_commit_leaves_nothing(blob: BlobBackend) -> None:
    storage = await blob.start()
    writer = storage.new_writer()
    await writer.write(b"half an upload")
    assert await blob.staged() == 1
    writer.discard()
    assert await blob.staged() == 0
    path = await written(storage, b"whole", keys.upload_key(ID, "x", DAY))
    await blob.backdate(path, OLD)
    assert [p async for _, p in storage.orphans()] == [path], "nothing but the one commit"


async def test_reads_and_checks_refuse_a_size_the_bytes_do_not_have(blob: BlobBackend) -> None:
    storage = await blob.start()
    path = await written(storage, b"0123456789", keys.upload_key(ID, "x", DAY))
    with pytest.raises(IntegrityError, match="12345"):
        await storage.read(path, 12345, 0, 0, 4096)
    with pytest.raises(IntegrityError, match="says 9"):
        await storage.check(path, 9)
    await storage.check(path, 10)


async def test_removed_bytes_fail_their_check(blob: BlobBackend) -> None:
    storage = await blob.start()
    path = await written(storage, b"bytes", keys.upload_key(ID, "x", DAY))
    await storage.remove(path)
    with pytest.raises(IntegrityError, match="missing"):
        await storage.check(path, 5)
    with pytest.raises(IntegrityError, match="missing"):
        await storage.read(path, 5, 0, 0, 4096)
    await storage.remove(path)  # gone already: not an error (DeleteAsset may be retried)
    with pytest.raises(NotFound, match="not a path in this storage"):
        await storage.check("/not/in/this/storage", 5)


async def test_an_orphan_goes_only_if_the_records_still_say_so_when_asked_again(
    blob: BlobBackend,
) -> None:
    storage = await blob.start()
    path = await written(storage, b"orphan?", keys.upload_key(ID, "x", DAY))
    answers = [False, True]

    async def unclaimed() -> bool:
        return answers.pop(0)

    assert not await storage.remove_orphan(path, unclaimed)  # a record came meanwhile
    await storage.check(path, 7)
    assert await storage.remove_orphan(path, unclaimed)
    with pytest.raises(IntegrityError, match="missing"):
        await storage.check(path, 7)
    assert answers == []


async def test_orphans_are_only_files_past_the_grace(blob: BlobBackend) -> None:
    storage = await blob.start()
    old_upload = await written(storage, b"a", keys.upload_key(ID, "a", DAY))
    old_output = await written(storage, b"b", keys.generated_key("t", OTHER, "b"))
    fresh_id = "5b0e4f0e-0000-4000-8000-0000000000aa"
    await written(storage, b"c", keys.upload_key(fresh_id, "c", DAY))  # maybe in flight
    in_flight = storage.new_writer()
    await in_flight.write(b"d")
    for path in (old_upload, old_output):
        await blob.backdate(path, OLD)
    found = sorted([pair async for pair in storage.orphans()])
    assert found == sorted([(ID, old_upload), (OTHER, old_output)])
    in_flight.discard()


async def test_a_pass_over_orphans_resumes_after_any_path_it_yielded(blob: BlobBackend) -> None:
    storage = await blob.start()
    ids = [f"5b0e4f0e-0000-4000-8000-0000000001{i:02d}" for i in range(6)]
    # Task names whose order as strings and as path parts differ ("t-1/" < "t/").
    keys_ = [
        keys.upload_key(ids[0], "a", DAY),
        keys.upload_key(ids[1], "b", DAY),
        keys.upload_key(ids[2], "c", DAY + timedelta(days=1)),
        keys.generated_key("t", ids[3], "d"),
        keys.generated_key("t-1", ids[4], "e"),
        keys.generated_key("t", ids[5], "f"),
    ]
    for key in keys_:
        await blob.backdate(await written(storage, b"x", key), OLD)
    whole = [pair async for pair in storage.orphans()]
    assert sorted(i for i, _ in whole) == sorted(ids)
    for at, (_, path) in enumerate(whole):
        assert [pair async for pair in storage.orphans(path)] == whole[at + 1 :], path


async def test_a_move_keeps_the_source_until_finish(blob: BlobBackend) -> None:
    storage = await blob.start()
    source = blob.put_source("out.txt", b"worker output")
    staged = await storage.adopt(source, move=True)
    assert (staged.size_bytes, staged.sha256) == (13, hashlib.sha256(b"worker output").hexdigest())
    path = await staged.commit(keys.generated_key("task", ID, "out.txt"))
    # Until the record commits, a crash must not lose the worker's file.
    assert blob.source(source) == b"worker output"
    assert await content(storage, path, 13) == b"worker output"
    await staged.finish()
    assert blob.source(source) is None
    assert await content(storage, path, 13) == b"worker output"
    await storage.close()
    after = await blob.start()
    assert await after.leftovers() == [], "a finished move leaves nothing to recover"


async def test_a_rolled_back_move_keeps_the_source(blob: BlobBackend) -> None:
    storage = await blob.start()
    source = blob.put_source("out.txt", b"worker output")
    staged = await storage.adopt(source, move=True)
    path = await staged.commit(keys.generated_key("task", ID, "out.txt"))
    await staged.rollback()
    assert blob.source(source) == b"worker output"
    with pytest.raises(IntegrityError):
        await storage.check(path, 13)
    again = await storage.adopt(source, move=True)  # released: it can be adopted again
    await again.rollback()
    assert blob.source(source) == b"worker output"


async def test_a_copy_leaves_the_source(blob: BlobBackend) -> None:
    storage = await blob.start()
    source = blob.put_source("in.txt", b"shared input")
    staged = await storage.adopt(source, move=False)
    path = await staged.commit(keys.upload_key(ID, "in.txt", DAY))
    await staged.finish()
    assert blob.source(source) == b"shared input"
    assert await content(storage, path, 12) == b"shared input"


async def test_a_forgone_adoption_stores_nothing_and_a_move_takes_its_source(
    blob: BlobBackend,
) -> None:
    """forgo(): the record points at the same bytes stored already; what was staged goes,
    a moved file goes as finish() would take it, a copied one stays."""
    storage = await blob.start()
    moved = blob.put_source("moved.txt", b"worker output")
    copied = blob.put_source("copied.txt", b"worker output")
    for source, move in ((moved, True), (copied, False)):
        staged = await storage.adopt(source, move=move)
        await staged.forgo()
        await staged.forgo()  # settled once
    assert blob.source(moved) is None
    assert blob.source(copied) == b"worker output"
    assert [pair async for pair in storage.orphans()] == [], "nothing was stored"
    again = await storage.adopt(copied, move=True)  # released: it can be adopted again
    await again.rollback()
    await storage.close()
    after = await blob.start()
    assert await after.leftovers() == []


async def test_adopt_refuses_what_it_may_not_or_cannot_take(blob: BlobBackend) -> None:
    storage = await blob.start()
    with pytest.raises(NotFound, match="does not exist"):
        await storage.adopt(blob.source_path("never-written"), move=False)
    with pytest.raises(InvalidArgument, match="absolute"):
        await storage.adopt("relative/path", move=False)
    source = blob.put_source("contested", b"x")
    first = await storage.adopt(source, move=True)
    with pytest.raises(Conflict, match="being adopted by another request"):
        await storage.adopt(source, move=True)
    with pytest.raises(Conflict, match="being adopted by another request"):
        await storage.adopt(source, move=False)
    await first.rollback()
    reading = await storage.adopt(source, move=False)  # copies may share a source...
    also = await storage.adopt(source, move=False)
    with pytest.raises(Conflict, match="being adopted by another request"):
        await storage.adopt(source, move=True)  # ...but a move waits for them to let go
    await reading.rollback()
    await also.finish()
    await (await storage.adopt(source, move=True)).rollback()
    closed = await blob.start(imports=False)
    with pytest.raises(PermissionDenied, match="--import-root"):
        await closed.adopt(source, move=False)


async def test_recovery_settles_abandoned_moves_by_their_record(blob: BlobBackend) -> None:
    """An instance dies after committing two moves: one record committed, one did not."""
    dead = await blob.start()
    ids = ["5b0e4f0e-0000-4000-8000-00000000000a", "5b0e4f0e-0000-4000-8000-00000000000b"]
    paths = {}
    for asset_id in ids:
        staged = await dead.adopt(blob.put_source(asset_id, asset_id.encode()), move=True)
        paths[asset_id] = await staged.commit(keys.generated_key("t", asset_id, "f"))
        staged.abandon()  # the record write's outcome is unknown: keep everything
    half = dead.new_writer()
    await half.write(b"an upload cut short")
    await dead.close()  # its unsettled moves keep its staging for the next process

    after = await blob.start()
    assert await after.sweep_dead_staging() == 0, "unsettled moves keep the staging"
    leftovers = {lo.asset_id: lo for lo in await after.leftovers()}
    assert {a: lo.storage_path for a, lo in leftovers.items()} == paths
    committed, undone = ids
    await after.settle(leftovers[committed], committed=True)
    await after.settle(leftovers[undone], committed=False)
    assert blob.source(blob.source_path(committed)) is None
    assert await content(after, paths[committed], 36) == committed.encode()
    assert blob.source(blob.source_path(undone)) == undone.encode()
    with pytest.raises(IntegrityError):
        await after.check(paths[undone], 36)
    assert await after.leftovers() == []

    alive = await blob.start()  # another live server: its staging is not swept
    in_flight = alive.new_writer()
    await in_flight.write(b"still coming")
    assert await after.sweep_dead_staging() >= 1
    assert await after.sweep_dead_staging() == 0
    assert await blob.staged() == 1, "the dead upload went, the live one stayed"
    await in_flight.seal()
    path = await in_flight.commit(keys.upload_key(ID, "late", DAY))
    await in_flight.finish()
    assert await content(alive, path, 12) == b"still coming"


# What a move's journal entry holds on disk, as released: a process of the next version
# settles the moves a dead one of this version left, so these names and meanings stay.
JOURNAL_FIELDS = {"source", "dev", "ino", "final"}
PLACED_FIELD = {"local": "final_ino", "s3": "blob_id"}  # what tells the placed bytes apart


async def test_a_move_journal_entry_keeps_its_released_format(blob: BlobBackend) -> None:
    dead = await blob.start()
    asset_id = "5b0e4f0e-0000-4000-8000-0000000000f1"
    source = blob.put_source(asset_id, b"moved")
    before = os.stat(source) if blob.name != "memory" else None
    key = keys.generated_key("t", asset_id, "f")
    staged = await dead.adopt(source, move=True)
    path = await staged.commit(key)
    staged.abandon()
    await dead.close()

    (found,) = await (await blob.start()).leftovers()
    assert (found.asset_id, found.storage_path) == (asset_id, path)
    leftover: Any = found  # past the port: each backend's own entry
    if blob.name == "memory":  # no file: the entry is the move itself
        assert (leftover.intent.source, leftover.intent.final) == (source, key)
        return
    entry = json.loads(Path(leftover.journal).read_text())
    assert set(entry) == JOURNAL_FIELDS | {PLACED_FIELD[blob.name]}
    assert (entry["source"], entry["final"]) == (source, key)
    assert before is not None and (entry["dev"], entry["ino"]) == (before.st_dev, before.st_ino)


class _NoRecords:
    async def get(self, asset_id: str) -> None:
        return None

    async def referenced(self, storage_paths: list[str]) -> set[str]:
        return set()


async def test_recovery_while_serving_does_a_bounded_part_per_call(blob: BlobBackend) -> None:
    """Three processes die with a move journaled and an upload staged: each call settles
    one move and removes one dead staging at most; a live process's staging stays."""
    for n in range(3):
        dead = await blob.start()
        asset_id = f"5b0e4f0e-0000-4000-8000-0000000003{n:02d}"
        staged = await dead.adopt(blob.put_source(asset_id, b"moved"), move=True)
        await staged.commit(keys.generated_key("t", asset_id, "f"))
        staged.abandon()
        half = dead.new_writer()
        await half.write(b"an upload cut short")
        await dead.close()
    alive = await blob.start()
    in_flight = alive.new_writer()
    await in_flight.write(b"still coming")
    # While serving, moves journaled within the grace wait (a record write may land).
    assert await recovery.recover(_NoRecords(), alive, 1, serving=True) == 0  # type: ignore[arg-type]
    assert len(await alive.leftovers()) == 3
    done = []
    for _ in range(10):
        done.append(await recovery.recover(_NoRecords(), alive, 1))  # type: ignore[arg-type]
        if not done[-1]:
            break
    assert done[-1] == 0 and all(0 < n <= 2 for n in done[:-1]), done
    assert await alive.leftovers() == []
    assert await blob.staged() == 1, "the live upload's staging stayed"
    in_flight.discard()


async def test_a_move_committed_over_a_replaced_final_keeps_its_source(blob: BlobBackend) -> None:
    """Recovery removes a source only if the journaled bytes are the ones standing there."""
    dead = await blob.start()
    source = blob.put_source("s", b"source")
    staged = await dead.adopt(source, move=True)
    path = await staged.commit(keys.generated_key("t", ID, "f"))
    staged.abandon()
    await dead.close()
    after = await blob.start()
    await after.remove(path)
    [leftover] = await after.leftovers()
    await after.settle(leftover, committed=True)
    assert blob.source(source) == b"source", "never neither: the source stays"


async def test_keys_are_derived_never_raw(blob: BlobBackend) -> None:
    storage = await blob.start()
    key = keys.upload_key(ID, "../../etc/passwd", DAY)
    assert ".." not in key.split("/") and ID in key and key.startswith("uploads/")
    assert keys.generated_key("t1", ID, "a") != keys.generated_key("t2", ID, "a")
    for bad_task in ("../x", "", "a/b", "-starts-with-dash"):
        with pytest.raises(InvalidArgument, match="task_id"):
            keys.generated_key(bad_task, ID, "a")
    for bad_id in ("../" + ID, "", "not-a-uuid"):
        with pytest.raises(InvalidArgument, match="asset_id"):
            keys.upload_key(bad_id, "a", DAY)
        with pytest.raises(InvalidArgument, match="asset_id"):
            keys.generated_key("t", bad_id, "a")
    path = await written(storage, b"safe", key)
    assert await content(storage, path, 4) == b"safe"
    for raw in ("uploads/../../outside", "tmp/x", "/uploads/x", "uploads"):
        writer = storage.new_writer()
        await writer.write(b"x")
        await writer.seal()
        with pytest.raises(InvalidArgument):
            await writer.commit(raw)
        await writer.rollback()
    assert await blob.staged() == 0


# --- block checksums (issue 18 item 2) -------------------------------------------------

BLOCK = BLOCK_BYTES
# Three blocks and a bit: the last one short.
BLOCKS_DATA = bytes(range(256)) * (3 * BLOCK // 256) + b"tail" * 25


async def test_blobs_carry_the_block_sums_of_their_bytes(blob: BlobBackend) -> None:
    storage = await blob.start()
    writer = storage.new_writer()
    for start in range(0, len(BLOCKS_DATA), 300_001):  # pieces across block boundaries
        await writer.write(memoryview(BLOCKS_DATA)[start : start + 300_001])
    await writer.seal()
    assert writer.block_sums == sums_of(BLOCKS_DATA)
    assert writer.block_sums.count == 4 and writer.block_sums.covers(len(BLOCKS_DATA))
    await writer.rollback()
    empty = storage.new_writer()
    await empty.seal()
    assert empty.block_sums == sums_of(b"") and empty.block_sums.covers(0)
    for move in (False, True):
        source = blob.put_source(f"in-{move}.bin", BLOCKS_DATA)
        adopted = await storage.adopt(source, move=move)
        assert adopted.block_sums == sums_of(BLOCKS_DATA), "adopted files are summed too"
        await adopted.rollback()


async def test_checked_reads_stop_at_the_first_bad_block(blob: BlobBackend) -> None:
    storage = await blob.start()
    path = await written(storage, BLOCKS_DATA, keys.upload_key(ID, "x", DAY))
    sums = sums_of(BLOCKS_DATA)
    size = len(BLOCKS_DATA)
    assert await checked(storage, path, sums) == BLOCKS_DATA
    flipped = bytearray(BLOCKS_DATA)
    flipped[BLOCK + BLOCK // 2] ^= 0x10  # one bit in the second block, same size
    await blob.overwrite(path, bytes(flipped))

    got: list[bytes] = []
    with pytest.raises(CorruptBytes, match=f"offset {BLOCK} ") as info:
        chunks = await storage.read(path, size, 0, 0, 4096, sums)
        async for chunk in chunks:
            got.append(chunk)
    assert info.value.offset == BLOCK
    assert b"".join(got) == BLOCKS_DATA[:BLOCK], "only blocks that checked out were sent"
    # Ranges: checked in whole blocks; one that does not touch the bad block is served.
    assert await checked(storage, path, sums, 10, 1000) == BLOCKS_DATA[10:1010]
    assert await checked(storage, path, sums, 2 * BLOCK + 5, 0) == BLOCKS_DATA[2 * BLOCK + 5 :]
    for offset, limit in ((BLOCK - 1, 2), (2 * BLOCK - 1, 1), (0, 0), (BLOCK + 7, 1)):
        with pytest.raises(CorruptBytes):
            await checked(storage, path, sums, offset, limit)
    with pytest.raises(CorruptBytes, match=f"offset {BLOCK} "):
        await storage.verify(path, size, sums)


async def test_a_same_size_replacement_fails_every_check_that_reads(blob: BlobBackend) -> None:
    storage = await blob.start()
    path = await written(storage, BLOCKS_DATA, keys.upload_key(ID, "x", DAY))
    sha = hashlib.sha256(BLOCKS_DATA).hexdigest()
    # Sums computed after the fact (assets stored before they were kept), vouched for by
    # the sha256; other bytes of the same size are refused, not summed.
    assert await storage.summed(path, len(BLOCKS_DATA), sha) == sums_of(BLOCKS_DATA)
    other = bytes(len(BLOCKS_DATA))
    await blob.overwrite(path, other)
    with pytest.raises(CorruptBytes, match="sha256"):
        await storage.summed(path, len(BLOCKS_DATA), sha)
    with pytest.raises(CorruptBytes, match="offset 0 "):
        await storage.verify(path, len(BLOCKS_DATA), sums_of(BLOCKS_DATA))
    await storage.check(path, len(BLOCKS_DATA))  # the size alone still matches


@pytest.mark.parametrize("name", ["local", "memory"])
async def test_check_many_flags_bytes_changed_after_their_record(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Where the storage can tell (a file's ctime; a memory object's identity), bytes
    written after their record's time are Unverified until verify() vouches for them.
    An object store cannot tell cheaply: its manifests read inputs through checks."""
    async with blob_backend(name, tmp_path, request) as backend:
        storage = await backend.start()
        path = await written(storage, BLOCKS_DATA, keys.upload_key(ID, "x", DAY))
        size, sums = len(BLOCKS_DATA), sums_of(BLOCKS_DATA)
        now = [datetime.now(UTC)]
        assert await storage.check_many([(path, size)], now) == [None], "not changed since"
        long_ago = [datetime(1970, 1, 2, tzinfo=UTC)]  # before the bytes were written
        [late] = await storage.check_many([(path, size)], long_ago)
        assert isinstance(late, Unverified)
        await storage.verify(path, size, sums)
        assert await storage.check_many([(path, size)], long_ago) == [None], "vouched for"
        await backend.overwrite(path, bytes(size))
        [late] = await storage.check_many([(path, size)], long_ago)
        assert isinstance(late, Unverified), "changed again after it was vouched for"
        with pytest.raises(CorruptBytes):
            await storage.verify(path, size, sums)


async def checked(
    storage: BlobStorage, path: str, sums: BlockSums, offset: int = 0, limit: int = 0
) -> bytes:
    size = len(BLOCKS_DATA)
    chunks = await storage.read(path, size, offset, limit, 4096, sums)
    parts = [c async for c in chunks]
    assert all(0 < len(c) <= 4096 for c in parts), "chunks must respect chunk_size"
    return b"".join(parts)


async def test_ping_answers_while_open_and_is_unavailable_once_closed(blob: BlobBackend) -> None:
    """The readiness probe's storage check (server.py's health monitor)."""
    storage = await blob.start()
    await storage.ping()
    await storage.close()
    with pytest.raises(Unavailable):
        await storage.ping()


async def test_a_clone_is_a_second_name_for_the_same_bytes(blob: BlobBackend) -> None:
    """clone() (issue 24): stored bytes committed under another key without a copy, where
    the storage can. Each name goes on its own: a rolled-back clone, or the original
    removed, leaves the other whole; an orphaned clone is one orphan, the original none."""
    storage = await blob.start()
    data = os.urandom(3 * BLOCK_BYTES // 2)
    original = await written(storage, data, keys.upload_key(ID, "a.bin", DAY))
    sha, sums = hashlib.sha256(data).hexdigest(), sums_of(data)
    cloned = await storage.clone(original, len(data), sha, sums)
    assert cloned is not None
    assert (cloned.size_bytes, cloned.sha256, cloned.block_sums) == (len(data), sha, sums)
    if blob.name == "s3":
        await _same_object_for_another_record(storage, original, data, sha, sums)
        return
    second = await cloned.commit(keys.upload_key(OTHER, "b.bin", DAY))
    await cloned.finish()
    assert second != original
    assert await content(storage, second, len(data)) == data
    # A rolled-back clone takes its own name only.
    third_id = "5b0e4f0e-0000-4000-8000-0000000000cc"
    undone = await storage.clone(original, len(data), sha, sums)
    assert undone is not None
    third = await undone.commit(keys.upload_key(third_id, "c.bin", DAY))
    await undone.rollback()
    with pytest.raises(IntegrityError):
        await storage.check(third, len(data))
    # The original removed, the clone keeps the bytes.
    await storage.remove(original)
    with pytest.raises(IntegrityError):
        await storage.check(original, len(data))
    assert await content(storage, second, len(data), 0, 0) == data
    await storage.verify(second, len(data), sums)
    # Bytes removed before the clone's commit (their asset deleted meanwhile):
    # SharedBytesGone, as for an object, nothing placed; the caller looks again.
    late = await storage.clone(original, len(data), sha, sums)
    assert late is not None
    with pytest.raises(SharedBytesGone):
        await late.commit(keys.upload_key(third_id, "c.bin", DAY))
    await late.rollback()
    await blob.backdate(second, OLD)
    assert [pair async for pair in storage.orphans()] == [(OTHER, second)]


async def _same_object_for_another_record(
    storage: BlobStorage, original: str, data: bytes, sha: str, sums: BlockSums
) -> None:
    """An object store has no second names: a clone is the same object (its records are
    its references, domain/references.py), which nothing the clone does writes or
    removes; removing the object is its last record's delete's to do."""
    other = keys.upload_key(OTHER, "b.bin", DAY)
    for end in ("finish", "rollback", "discard", "abandon"):
        cloned = await storage.clone(original, len(data), sha, sums)
        assert cloned is not None
        assert await cloned.commit(other) == original
        ended = getattr(cloned, end)()
        if ended is not None:
            await ended
        assert await content(storage, original, len(data)) == data, end
    await storage.remove(original)
    late = await storage.clone(original, len(data), sha, sums)
    assert late is not None
    with pytest.raises(SharedBytesGone):  # the caller stores the bytes anew
        await late.commit(other)
    await late.rollback()
    assert [pair async for pair in storage.orphans()] == []
