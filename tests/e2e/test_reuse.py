"""End to end: get-or-create by key through the Python clients (issue 24 item 1)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from asset_client import (
    AssetClient,
    AssetStatus,
    AsyncAssetClient,
    GetOrCreateOutcome,
    InvalidArgumentError,
)

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.conftest import StartServer
from tests.e2e.cli_helpers import asset, out
from tests.e2e.scrape import metrics_port, rpc, scrape
from tests.e2e.security_helpers import SecureFiles, bearer, token_for
from tests.e2e.security_helpers import start_server as start_secured
from tests.serverproc import ServerProcess


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


# --- uploads that skip known bytes (item 2) --------------------------------------------


@pytest.fixture
def metered(start_server: StartServer) -> ServerProcess:
    return start_server("--metrics-listen", "127.0.0.1:0")


def received(port: int) -> float:
    """Messages the server received on UploadAsset streams (headers and chunks), once every
    stream has ended and been counted (a call is counted just after its answer is sent)."""
    uploads = rpc("UploadAsset", kind="client_stream")
    deadline, last = time.monotonic() + 10, -1.0
    while True:
        s = scrape(port)
        started = s.total("grpc_server_started_total", uploads)
        handled = s.total("grpc_server_handled_total", uploads)
        value = s.total("grpc_server_msg_received_total", uploads)
        if (started == handled and value == last) or time.monotonic() > deadline:
            return value
        last = value
        time.sleep(0.05)


def test_an_upload_of_stored_bytes_sends_no_chunk(metered: ServerProcess, tmp_path: Path) -> None:
    port = metrics_port(metered)
    data = os.urandom(5 * 1024 * 1024 + 3)  # resumable by default, and over the threshold
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    with AssetClient(metered.address, timeout=30) as c:
        before = received(port)
        first = c.upload(path, progress=False)  # unknown: asked, then sent
        sent = received(port) - before
        assert sent == 1 + 1 + 6  # the reuse question, then a header and six 1 MiB chunks
        before = received(port)
        again = c.upload(path, label="again.bin", progress=False)
        assert received(port) - before == 1  # the header alone: no chunk
        assert again.id != first.id and again.sha256 == first.sha256
        promise = c.create_pending("task-1", "out.bin")
        before = received(port)
        done = c.upload(path, pending_asset_id=promise.id, progress=False)
        assert received(port) - before == 1
        assert done.id == promise.id and done.status is AssetStatus.AVAILABLE
        for made in (again, done):
            back = tmp_path / f"{made.id}.bin"
            c.download(made.id, back, progress=False)
            assert back.read_bytes() == data
        # Turned off, or under the threshold: the bytes are sent.
        before = received(port)
        c.upload(path, label="third.bin", progress=False, reuse=False, resumable=False)
        assert received(port) - before == 1 + 6
    # `asset put` does it by default.
    before = received(port)
    put = out(asset(metered.address, "put", "--no-progress", str(path)))
    assert received(port) - before == 1
    with AssetClient(metered.address, timeout=30) as c:
        assert c.get(put.strip()).sha256 == first.sha256


def test_a_task_token_may_not_reuse_stored_bytes_and_the_client_sends_them(
    tmp_path: Path,
) -> None:
    """With reuse a task could copy into its own output (and read) any stored bytes whose
    sha256 it knows: the server refuses the field to task tokens, and the client, told
    so, sends the bytes."""
    (tmp_path / "imports").mkdir()
    files = SecureFiles(tmp_path).with_tokens().with_secret()
    server = start_secured(tmp_path, tmp_path / "imports", files.args)
    try:
        data = os.urandom(2 * 1024 * 1024)
        path = tmp_path / "out.bin"
        path.write_bytes(data)
        with AssetClient(server.address, timeout=30, token=token_for("orchestrator")) as orch:
            orch.upload(path, progress=False)  # the bytes are stored
            promise = orch.create_pending("task-a", "out.bin")
            token = orch.mint_task_token("task-a").token
        header = pb.UploadHeader(
            pending_asset_id=promise.id,
            expected_size_bytes=len(data),
            expected_sha256=hashlib.sha256(data).hexdigest(),
            reuse_stored_bytes=True,
        )
        with (
            grpc.insecure_channel(server.address) as channel,
            pytest.raises(grpc.RpcError) as refused,
        ):
            pb_grpc.AssetServiceStub(channel).UploadAsset(
                iter([pb.UploadAssetRequest(header=header)]), metadata=bearer(token), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "reuse_stored_bytes" in (refused.value.details() or "")
        with AssetClient(server.address, timeout=30, token=token) as task:
            done = task.upload(path, pending_asset_id=promise.id, progress=False)
        assert done.status is AssetStatus.AVAILABLE and done.size_bytes == len(data)
    finally:
        server.stop()
