"""Bytes stored once (issue 24 item 2), the store's part, one contract over every store.

Records that share stored bytes point at one storage_path; they are its references. A
shared write (insert or fulfilment, shared=True) applies only while an AVAILABLE record
still points there, in the same atomic write; referenced() says which paths some record
points at, and is what a delete reads before removing bytes. Together: once a delete's
read says "no reference", no record can point at the bytes again.
"""

from __future__ import annotations

import asyncio

import pytest

from asset_service.domain.errors import Conflict, SharedBytesGone
from asset_service.domain.models import (
    Asset,
    AssetFilter,
    AssetType,
    Failure,
    Fulfillment,
    Status,
)
from tests.contract.conftest import Backend
from tests.contract.test_store_contract import T0
from tests.records import make_record, pending_record

PATH = "s3://bucket/uploads/2026-01-02/first/data.bin"


def stored(path: str = PATH, label: str = "data.bin") -> Asset:
    """An AVAILABLE FILE record at `path`, as an upload makes it."""
    return make_record(
        Status.AVAILABLE,
        AssetType.FILE,
        "application/octet-stream",
        label=label,
        at=T0,
        storage_path=path,
        size_bytes=5,
        sha256="cd" * 32,
    )


def fulfilment(path: str = PATH) -> Fulfillment:
    return Fulfillment(size_bytes=5, sha256="cd" * 32, storage_path=path)


async def test_a_shared_insert_needs_a_live_record_at_the_path(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(SharedBytesGone):
        await store.insert(stored(), shared=True)  # nothing was ever stored there
    first = await store.insert(stored())
    second = await store.insert(stored(label="again.bin"), shared=True)
    assert second.storage_path == first.storage_path == PATH
    assert (await store.get(second.id)) == second
    # The first goes; the second still points at the bytes, so a third may share them.
    await store.delete(first.id)
    third = await store.insert(stored(label="third.bin"), shared=True)
    await store.delete(second.id)
    await store.delete(third.id)
    revision = await store.current_revision()
    refused = stored(label="late.bin")
    with pytest.raises(SharedBytesGone):
        await store.insert(refused, shared=True)
    # Refused means nothing written: no record, no revision (FerretDB: no transactions,
    # so the batch's counter step stands and a revision is skipped, never reused).
    assert await store.get(refused.id) is None
    if "transactions" not in backend.lacks:
        assert await store.current_revision() == revision
    page = await store.query(AssetFilter(status=Status.AVAILABLE), 10, "")
    assert page.assets == []


async def test_a_record_that_is_not_available_is_no_reference_to_share(
    backend: Backend,
) -> None:
    store = backend.store
    # A PENDING promise or a FAILED asset points at no bytes; an unshared insert of a
    # record at another path leaves PATH unreferenced.
    promise = await store.insert(pending_record(at=T0))
    await store.transition(promise.id, Status.PENDING, Failure("boom"), T0)
    await store.insert(stored(path=PATH + ".other"))
    with pytest.raises(SharedBytesGone):
        await store.insert(stored(), shared=True)


async def test_a_shared_fulfilment_needs_a_live_record_at_the_path(backend: Backend) -> None:
    store = backend.store
    promise = await store.insert(pending_record(at=T0))
    with pytest.raises(SharedBytesGone):
        await store.transition(promise.id, Status.PENDING, fulfilment(), T0, shared=True)
    still = await store.get(promise.id)
    assert still is not None and still.status is Status.PENDING and still.storage_path == ""
    source = await store.insert(stored())
    done = await store.transition(promise.id, Status.PENDING, fulfilment(), T0, shared=True)
    assert (done.status, done.storage_path) == (Status.AVAILABLE, PATH)
    assert source.storage_path == PATH
    # A shared fulfilment is still conditional on its status, like any transition.
    with pytest.raises(Conflict):
        await store.transition(promise.id, Status.PENDING, fulfilment(), T0, shared=True)


async def test_referenced_names_the_paths_records_point_at(backend: Backend) -> None:
    store = backend.store
    other = PATH + ".other"
    assert await store.referenced([PATH, other, ""]) == set()
    first = await store.insert(stored())
    second = await store.insert(stored(label="again.bin"), shared=True)
    lone = await store.insert(stored(path=other))
    assert await store.referenced([PATH, other, "s3://bucket/none"]) == {PATH, other}
    await store.delete(first.id)
    assert await store.referenced([PATH]) == {PATH}, "the second still points there"
    await store.delete(second.id)
    assert await store.referenced([PATH, other]) == {other}
    await store.delete(lone.id)
    assert await store.referenced([PATH, other]) == set()
    # Many paths at once (more than one statement's worth on SQLite).
    many = [stored(path=f"{PATH}.{i}") for i in range(600)]
    for record in many[::50]:
        await store.insert(record)
    paths = [r.storage_path for r in many]
    assert await store.referenced(paths) == {r.storage_path for r in many[::50]}


async def test_a_delete_racing_shared_writes_never_strands_a_record(backend: Backend) -> None:
    """The deleter of the last reference reads referenced() after its delete, as the
    domain does before removing bytes. Whatever the interleaving: if that read says no
    record points at the bytes, none does at the end (every racing shared write was
    refused), so removing them strands nobody."""
    store = backend.store
    for _ in range(5):
        source = await store.insert(stored())
        promises = [await store.insert(pending_record(at=T0)) for _ in range(3)]

        async def delete_then_read(asset_id: str = source.id) -> set[str]:
            await store.delete(asset_id)
            return await store.referenced([PATH])

        async def share() -> Asset:
            return await store.insert(stored(label="again.bin"), shared=True)

        async def fulfil(promise: Asset) -> Asset:
            return await store.transition(promise.id, Status.PENDING, fulfilment(), T0, shared=True)

        results = await asyncio.gather(
            share(),
            *(fulfil(p) for p in promises),
            delete_then_read(),
            share(),
            return_exceptions=True,
        )
        seen = results[-2]
        assert isinstance(seen, set), seen
        won = [r for r in results if isinstance(r, Asset)]
        refused = [r for r in results if isinstance(r, SharedBytesGone)]
        assert len(won) + len(refused) == len(results) - 1, results
        at_end = await store.referenced([PATH])
        if not seen:
            assert won == [] and at_end == set(), "a record points at bytes deemed unreferenced"
        else:
            assert won and at_end == {PATH}
        # Clean up for the next round: every record that points at PATH goes.
        for record in won:
            await store.delete(record.id)
        for promise in promises:
            await store.delete(promise.id)  # None if it went as one of `won`
        assert await store.referenced([PATH]) == set()
