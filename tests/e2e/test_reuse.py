"""End to end: get-or-create by key through the Python clients (issue 24 item 1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from asset_client import (
    AssetClient,
    AssetStatus,
    AsyncAssetClient,
    GetOrCreateOutcome,
    InvalidArgumentError,
)

from tests.e2e.cli_helpers import asset, out
from tests.e2e.helpers import AsyncDriver
from tests.serverproc import ServerProcess


@pytest.fixture(params=["sync", "asyncio"])
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[AssetClient]:
    if request.param == "sync":
        with AssetClient(server.address, timeout=15) as c:
            yield c
        return
    driver = AsyncDriver(server.address)
    try:
        yield cast(AssetClient, driver)
    finally:
        driver.close()


def test_produce_join_hit_and_the_key_listed(client: AssetClient, tmp_path: Path) -> None:
    key = "task:" + hashlib.sha256(b"code+inputs").hexdigest()
    first = client.get_or_create_pending(key, "task-a", "out.bin", lease_seconds=60)
    assert first.outcome is GetOrCreateOutcome.PRODUCE and first.must_produce
    assert first.asset.status is AssetStatus.PENDING and first.asset.key == key
    second = client.get_or_create_pending(key, "task-b", "out.bin")
    assert second.outcome is GetOrCreateOutcome.JOIN and second.asset.id == first.asset.id
    produced = tmp_path / "out.bin"
    produced.write_bytes(b"the output")
    client.upload(produced, pending_asset_id=first.asset.id)
    third = client.get_or_create_pending(key, "task-c", "out.bin")
    assert third.outcome is GetOrCreateOutcome.HIT
    assert third.asset.status is AssetStatus.AVAILABLE and third.asset.size_bytes == 10
    assert [a.id for a in client.list(key=key)] == [first.asset.id]
    assert [a.id for a in client.list(sha256=third.asset.sha256)] == [first.asset.id]
    # A failed producer does not block: the next call produces anew.
    other = client.get_or_create_pending(key + "-2", "task-a", "x.bin")
    client.fail(other.asset.id, "crashed")
    again = client.get_or_create_pending(key + "-2", "task-a", "x.bin")
    assert again.outcome is GetOrCreateOutcome.PRODUCE and again.asset.id != other.asset.id
    assert len(list(client.list(key=key + "-2"))) == 2


def test_a_bad_key_names_the_rule(client: AssetClient) -> None:
    with pytest.raises(InvalidArgumentError, match="the limit is 256"):
        client.get_or_create_pending("k" * 257, "task-a", "out.bin")
    with pytest.raises(InvalidArgumentError, match="letters, digits"):
        client.get_or_create_pending("no spaces", "task-a", "out.bin")
    with pytest.raises(InvalidArgumentError, match="key is required"):
        client.get_or_create_pending("", "task-a", "out.bin")


def test_a_hundred_callers_one_producer_and_the_selector_sees_the_key(
    server: ServerProcess,
) -> None:
    async def scenario() -> None:
        async with AsyncAssetClient(server.address, timeout=30) as c:
            # A revision above 0 to watch from (0 would mean "from now" to the client).
            await c.get_or_create_pending("before", "t", "o.bin")
            page = await c.list_page(key="shared", page_size=1)
            assert page.revision > 0
            events = c.watch_selector(key="shared", after_revision=page.revision)
            answers = await asyncio.gather(
                *(c.get_or_create_pending("shared", f"t{i}", "o.bin") for i in range(100))
            )
            producers = [a for a in answers if a.outcome is GetOrCreateOutcome.PRODUCE]
            assert len(producers) == 1
            assert {a.asset.id for a in answers} == {producers[0].asset.id}
            await c.get_or_create_pending("other-key", "t", "o.bin")
            first = await asyncio.wait_for(anext(events), 10)
            assert first.asset.id == producers[0].asset.id and first.asset.key == "shared"
            await c.fail(first.asset.id, "gave up")
            failed = await asyncio.wait_for(anext(events), 10)
            assert failed.asset.status is AssetStatus.FAILED  # and no "other-key" event
            await events.aclose()

    asyncio.run(scenario())


def test_asset_pending_with_a_key_and_ls_by_key(server: ServerProcess) -> None:
    made = out(asset(server.address, "pending", "task-1", "a.bin", "--key", "k1", "--lease", "60"))
    asset_id, outcome = made.split()
    assert outcome == "PRODUCE"
    joined = json.loads(
        out(asset(server.address, "pending", "task-2", "a.bin", "--key", "k1", "--json"))
    )
    assert joined["outcome"] == "JOIN" and joined["asset"]["id"] == asset_id
    listed = out(asset(server.address, "ls", "--key", "k1", "--json")).splitlines()
    assert [json.loads(line)["id"] for line in listed] == [asset_id]
    bad = asset(server.address, "pending", "task-1", "a.bin", "--key", "a b")
    assert bad.returncode != 0 and b"key 'a b' is invalid" in bad.stderr
