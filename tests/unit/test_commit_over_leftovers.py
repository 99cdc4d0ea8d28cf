"""A retry meets a commit its dead process left at the key: replaced at once, unless it is
live (another process still holds it) or a record points at it."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from asset_service.domain import keys, recovery
from asset_service.domain.commits import Committer, Handover
from asset_service.domain.errors import Conflict, FailedPrecondition, Occupied
from asset_service.domain.manager._base import new_record
from asset_service.domain.models import Asset, AssetType, Status, new_asset_id
from asset_service.domain.ports import StagedBlob
from asset_service.storage.local import LocalStorage
from asset_service.store.memory import MemoryStore

# Stages and commits bytes at a key like a server, says where, then waits to be killed.
COMMITTER = """
import asyncio, sys
from pathlib import Path
from asset_service.storage.local import LocalStorage

async def main():
    storage = LocalStorage(Path(sys.argv[1]))
    await storage.open()
    writer = storage.new_writer()
    await writer.write(sys.argv[3].encode())
    await writer.seal()
    print(await writer.commit(sys.argv[2]), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


class Process:
    def __init__(self, proc: asyncio.subprocess.Process, path: str) -> None:
        self.proc, self.path = proc, path

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)


@pytest.fixture
async def mid_commit(tmp_path: Path) -> AsyncIterator[tuple[Process, str]]:
    """Another server process, linked its bytes at the key, its record not yet written."""
    asset_id = new_asset_id()
    key = keys.generated_key("task", asset_id, "out.bin")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", COMMITTER, str(tmp_path), key, "half-made",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        assert line, "the committing process died before committing"
        yield Process(proc, line.decode().strip()), asset_id
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


async def staged(storage: LocalStorage, data: bytes) -> StagedBlob:
    writer = storage.new_writer()
    await writer.write(data)
    await writer.seal()
    return writer


def record(asset_id: str, path: str, blob: StagedBlob) -> Asset:
    return new_record(
        Status.AVAILABLE,
        AssetType.FILE,
        "out.bin",
        "application/octet-stream",
        "test",
        asset_id=asset_id,
        storage_path=path,
        size_bytes=blob.size_bytes,
        sha256=blob.sha256,
        block_sums=blob.block_sums,
    )


async def publish(committer: Committer, asset_id: str, blob: StagedBlob) -> Asset:
    """Commit `blob` as asset_id's bytes, inserting its record (as an upload would)."""
    key = keys.generated_key("task", asset_id, "out.bin")
    return await committer.publish(
        Handover(blob),
        asset_id,
        key,
        lambda path: committer.store.insert(record(asset_id, path, blob)),
    )


async def opened_committer() -> Committer:
    store = MemoryStore()
    await store.open()
    return Committer(store)


async def refused_and_kept(
    committer: Committer, storage: LocalStorage, asset_id: str, path: str, kept: bytes
) -> None:
    """Another commit of the asset is refused, and the bytes at `path` stay as they were."""
    with pytest.raises(Conflict, match="committed by another request meanwhile"):
        await publish(committer, asset_id, await staged(storage, b"other"))
    assert Path(path).read_bytes() == kept
    assert leftovers_in(storage) == []


async def after_death(other: Process, root: Path) -> tuple[LocalStorage, Committer]:
    """SIGKILL `other` between its link and its record write; a server on the same root,
    with the default grace (ten minutes), and its committer."""
    await other.kill()
    storage = LocalStorage(root)
    await storage.open()
    return storage, await opened_committer()


def leftovers_in(storage: LocalStorage) -> list[str]:
    return [p.name for p in storage.staging.iterdir() if p.name not in (".lock", "intents")]


async def test_a_retry_replaces_at_once_what_a_killed_process_left(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    other, asset_id = mid_commit
    storage, committer = await after_death(other, tmp_path)
    asset = await publish(committer, asset_id, await staged(storage, b"retried"))
    assert asset.storage_path == other.path
    chunks = await storage.read(asset.storage_path, asset.size_bytes, 0, 0, 4096)
    assert b"".join([c async for c in chunks]) == b"retried"
    assert leftovers_in(storage) == [], "the dead commit's bytes went once the record was in"
    await storage.close()


async def test_a_live_processs_commit_is_never_replaced_however_old(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    other, asset_id = mid_commit
    storage = LocalStorage(tmp_path, orphan_grace_seconds=0)  # age alone would allow it
    await storage.open()
    committer = await opened_committer()
    with pytest.raises(Conflict, match="being committed by another request") as refused:
        await publish(committer, asset_id, await staged(storage, b"retried"))
    assert not isinstance(refused.value, Occupied)
    assert Path(other.path).read_bytes() == b"half-made"
    assert leftovers_in(storage) == []
    # Once that process is dead, the same retry goes through.
    await other.kill()
    asset = await publish(committer, asset_id, await staged(storage, b"retried"))
    assert Path(asset.storage_path).read_bytes() == b"retried"
    await storage.close()


async def test_bytes_a_record_points_at_are_never_replaced(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, orphan_grace_seconds=0)
    await storage.open()
    committer = await opened_committer()
    asset_id = new_asset_id()
    first = await publish(committer, asset_id, await staged(storage, b"first"))
    # A second commit of the asset (its record read before the first one's landed).
    await refused_and_kept(committer, storage, asset_id, first.storage_path, b"first")
    await storage.close()


async def test_bytes_another_record_points_at_are_never_replaced(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    """As the orphan sweep asks (MetadataStore.referenced): any record at the path keeps
    the bytes, not only the asset's own (bytes stored once, domain/references.py)."""
    other, asset_id = mid_commit
    storage, committer = await after_death(other, tmp_path)
    sharer = await staged(storage, b"half-made")
    await committer.store.insert(record(new_asset_id(), other.path, sharer))
    sharer.discard()
    await refused_and_kept(committer, storage, asset_id, other.path, b"half-made")
    await storage.close()


async def test_a_replacement_whose_record_write_fails_puts_the_bytes_back(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    """The dead process's record write landed after all (MongoDB may apply one a while
    after its sender died): the retry's conditional write fails; its bytes must not stay,
    and the dead process's, which the record now points at, must come back."""
    other, asset_id = mid_commit
    storage, committer = await after_death(other, tmp_path)
    blob = await staged(storage, b"retried")

    async def landed_first(path: str) -> Asset:
        assert Path(path).read_bytes() == b"retried"
        raise FailedPrecondition("the asset is AVAILABLE already")

    key = keys.generated_key("task", asset_id, "out.bin")
    with pytest.raises(FailedPrecondition):
        await committer.publish(Handover(blob), asset_id, key, landed_first)
    assert Path(other.path).read_bytes() == b"half-made"
    assert leftovers_in(storage) == []
    await storage.close()


class RetryDuringSweep(MemoryStore):
    """The orphan sweep's first look finds no record; then, before it removes the file,
    a retry replaces the leftover and writes its record (`between`, run once)."""

    def __init__(self) -> None:
        super().__init__()
        self.between: Callable[[], Awaitable[object]] | None = None

    async def referenced(self, storage_paths: Sequence[str]) -> set[str]:
        found = await super().referenced(storage_paths)
        between, self.between = self.between, None
        if between is not None:
            await between()
        return found


async def test_the_orphan_sweep_keeps_what_a_retry_committed_after_its_first_look(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    other, asset_id = mid_commit
    await other.kill()
    storage = LocalStorage(tmp_path, orphan_grace_seconds=0)  # the leftover is a candidate
    await storage.open()
    store = RetryDuringSweep()
    await store.open()
    committer = Committer(store)
    blob = await staged(storage, b"retried")
    store.between = lambda: publish(committer, asset_id, blob)
    removed, _ = await recovery.reconcile_from(store, storage)
    assert removed == 0
    assert Path(other.path).read_bytes() == b"retried", "the retry's committed bytes went"
    assert (await store.get(asset_id)) is not None
    await storage.close()


async def test_the_orphan_sweep_passes_over_a_key_a_commit_holds(
    tmp_path: Path, mid_commit: tuple[Process, str]
) -> None:
    """A live commit holds its key's folder: the sweep removes nothing there and does
    not even ask the records."""
    other, _ = mid_commit
    storage = LocalStorage(tmp_path, orphan_grace_seconds=0)
    await storage.open()
    asked = []

    async def unclaimed() -> bool:
        asked.append(True)
        return True

    assert not await storage.remove_orphan(other.path, unclaimed)
    assert asked == [] and Path(other.path).read_bytes() == b"half-made"
    await other.kill()
    assert await storage.remove_orphan(other.path, unclaimed)
    assert asked == [True] and not Path(other.path).exists()
    await storage.close()
