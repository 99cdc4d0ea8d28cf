"""Bearer tokens with roles and task-scoped tokens, against a real server (plaintext loopback)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.security.tokens import hash_token
from tests.e2e.helpers import expect_error
from tests.e2e.security_helpers import (
    ADMIN,
    ALLOWED,
    CALLS,
    ORCH,
    ROLES,
    SECRET,
    Env,
    bearer,
    call_code,
    forged_task_token,
    server_process,
    snapshot,
    token_for,
    token_server,
)
from tests.serverproc import ServerProcess, serving


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, Path]]:
    base = tmp_path_factory.mktemp("secured")
    with token_server(base) as server:
        yield server, base / "imports", base / "tokens.toml"


@pytest.fixture
async def stub(
    secured: tuple[ServerProcess, Path, Path],
) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(secured[0].address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


@pytest.fixture
async def env(stub: pb_grpc.AssetServiceStub, secured: tuple[ServerProcess, Path, Path]) -> Env:
    made = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="note", value=pb.Value(text="readable")), metadata=ADMIN
    )
    return Env(stub, secured[1], value_id=made.asset.id)


def wait_for_log(server: ServerProcess, pattern: str, timeout: float = 10.0) -> str:
    """The first log line matching `pattern`, once the server has written it."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.log):
            if regex.search(line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line matches {pattern!r}:\n" + "".join(server.log[-20:]))


def test_the_role_table_cases_cover_every_rpc_of_the_service() -> None:
    service = pb.DESCRIPTOR.services_by_name["AssetService"]
    assert set(CALLS) == set(service.methods_by_name), "add a CALLS entry for each new RPC"


@pytest.mark.parametrize("rpc", sorted(CALLS))
@pytest.mark.parametrize(
    "credentials",
    [
        (),
        bearer("not-a-known-token"),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        bearer(forged_task_token("t-1", expires_in=-60)),
        bearer(forged_task_token("t-1", expires_in=600, secret=b"another-secret-" * 4)),
    ],
    ids=["none", "unknown", "not-bearer", "expired", "bad-signature"],
)
async def test_every_rpc_refuses_missing_or_invalid_credentials(
    stub: pb_grpc.AssetServiceStub, env: Env, rpc: str, credentials: tuple[tuple[str, str], ...]
) -> None:
    prepare, call = CALLS[rpc]
    await prepare(env)
    before = await snapshot(stub, env.import_root.parent / "data")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(stub, credentials, env)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, info.value.details()
    if "expired" in str(credentials):
        assert "token expired" in (info.value.details() or "")
    assert await snapshot(stub, env.import_root.parent / "data") == before


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("rpc", sorted(CALLS))
async def test_each_role_can_call_exactly_its_rpcs(
    stub: pb_grpc.AssetServiceStub, env: Env, rpc: str, role: str
) -> None:
    prepare, call = CALLS[rpc]
    await prepare(env)
    before = await snapshot(stub, env.import_root.parent / "data")
    code = await call_code(call(stub, bearer(token_for(role)), env))
    if rpc in ALLOWED[role]:
        assert code == grpc.StatusCode.OK
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # Refused before the handler ran: no record, revision or stored file changed.
        assert await snapshot(stub, env.import_root.parent / "data") == before


async def test_a_refusal_names_the_role_needed(stub: pb_grpc.AssetServiceStub, env: Env) -> None:
    await _value_for(env)
    await expect_error(
        stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=env.target_id), metadata=ORCH),
        grpc.StatusCode.PERMISSION_DENIED,
        "orchestrator-1 (roles: orchestrator) may not call DeleteAsset: it needs the admin role",
    )


async def _value_for(env: Env) -> None:
    await CALLS["DeleteAsset"][0](env)


async def test_health_needs_no_credentials(secured: tuple[ServerProcess, Path, Path]) -> None:
    async with grpc.aio.insecure_channel(secured[0].address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="asset.v1.AssetService")
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def _list_services(address: str, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata
        )
        return [s.name async for r in stream for s in r.list_services_response.service]


async def test_reflection_needs_a_reader_once_credentials_are_required(
    secured: tuple[ServerProcess, Path, Path],
) -> None:
    address = secured[0].address
    async with grpc.aio.insecure_channel(address) as channel:
        # Nothing is sent: a request racing the refusal can turn it into INTERNAL in
        # grpc's aio client (grpc/grpc#36066). The refusal comes before any message.
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "asset.v1.AssetService" in await _list_services(address, bearer(token_for("reader")))


async def test_reflection_off_is_not_served_and_health_still_is(tmp_path: Path) -> None:
    imports = tmp_path / "imports"
    imports.mkdir()
    with serving(server_process(tmp_path, imports, ["--reflection", "off"])) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            # With reflection served this would wait for a request until the deadline.
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="asset.v1.AssetService")
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_task_token_completes_its_own_task_and_nothing_else(
    stub: pb_grpc.AssetServiceStub, env: Env
) -> None:
    async def pending(task: str, type_: int = pb.ASSET_TYPE_VALUE, lease: int = 600) -> str:
        request = pb.CreatePendingAssetRequest(
            task_id=task, label="out", type=type_, lease_seconds=lease
        )
        return (await stub.CreatePendingAsset(request, metadata=ORCH)).asset.id

    mine, mine_file, theirs = (
        await pending("task-a"),
        await pending("task-a", pb.ASSET_TYPE_FILE),
        await pending("task-b-secret"),
    )
    other = (
        await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="private", value=pb.Value(text="x")), metadata=ORCH
        )
    ).asset.id
    minted = await stub.MintTaskToken(
        pb.MintTaskTokenRequest(task_id="task-a", input_asset_ids=[env.value_id], ttl_seconds=600),
        metadata=ORCH,
    )
    assert 590 <= minted.expires_at.seconds - time.time() <= 610
    task = bearer(minted.token)
    data = env.import_root.parent / "data"
    before = await snapshot(stub, data)

    def denied(call: object, *fragments: str) -> object:
        return expect_error(call, grpc.StatusCode.PERMISSION_DENIED, *fragments)

    # Everything outside the task: refused, without a word about other tasks.
    refusals = [
        denied(
            stub.FulfillAsset(
                pb.FulfillAssetRequest(asset_id=theirs, value=pb.Value(text="hijack")),
                metadata=task,
            ),
            "scoped to task task-a",
            f"asset {theirs} is not one of them",
        ),
        denied(stub.FailAsset(pb.FailAssetRequest(asset_id=theirs, reason="x"), metadata=task)),
        denied(stub.RenewLease(pb.RenewLeaseRequest(asset_id=theirs), metadata=task)),
        denied(stub.GetAsset(pb.GetAssetRequest(asset_id=theirs), metadata=task)),
        denied(
            stub.GetAsset(pb.GetAssetRequest(asset_id=other), metadata=task),
            f"asset {other} is neither an input nor an output of it",
        ),
        denied(
            stub.BatchGetAssets(
                pb.BatchGetAssetsRequest(asset_ids=[env.value_id, other]), metadata=task
            )
        ),
        denied(stub.GetManifest(pb.GetManifestRequest(asset_mappings={"x": other}), metadata=task)),
        denied(stub.ListAssets(pb.ListAssetsRequest(), metadata=task), "created_by_task=task-a"),
        denied(
            stub.ListAssets(pb.ListAssetsRequest(created_by_task="task-b-secret"), metadata=task)
        ),
        denied(
            stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x")), metadata=task
            ),
            "cannot call CreateValueAsset",
        ),
        denied(
            stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id="task-a", label="more"), metadata=task
            )
        ),
        denied(stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=mine), metadata=task)),
        denied(
            stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="task-a"), metadata=task),
            "cannot call MintTaskToken",
        ),
    ]
    for refusal in refusals:
        err = await refusal  # type: ignore[misc]
        assert "task-b-secret" not in (err.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _drain_watch(stub, [env.value_id, other], task)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A selector would show other tasks' assets: closed to task tokens, even their own task.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        selector = pb.AssetSelector(task_id="task-a")
        async for _ in stub.WatchAsset(pb.WatchAssetRequest(selector=selector), metadata=task):
            pass
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not set selector" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, task, pb.UploadHeader(pending_asset_id=theirs))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, task, pb.UploadHeader(label="new.bin"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await snapshot(stub, data) == before

    # Its own inputs and outputs: allowed.
    leased = (await stub.GetAsset(pb.GetAssetRequest(asset_id=mine), metadata=task)).asset
    renewed = await stub.RenewLease(
        pb.RenewLeaseRequest(asset_id=mine, lease_seconds=900), metadata=task
    )
    assert renewed.asset.lease_expire_time.seconds > leased.lease_expire_time.seconds
    # A renewal is a heartbeat, not a change of the asset (leases live in records of their
    # own): the record still names its last writer and keeps its revision.
    assert renewed.asset.updated_by == "orchestrator-1"
    assert renewed.asset.revision == leased.revision
    got = await stub.GetAsset(pb.GetAssetRequest(asset_id=env.value_id), metadata=task)
    assert got.asset.value.text == "readable"
    await stub.GetManifest(  # `wait` is open to task tokens too
        pb.GetManifestRequest(asset_mappings={"note": env.value_id}, wait=True), metadata=task
    )
    done = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=mine, value=pb.Value(text="result")), metadata=task
    )
    assert done.asset.status == pb.ASSET_STATUS_AVAILABLE
    uploaded = await _upload(stub, task, pb.UploadHeader(pending_asset_id=mine_file))
    assert uploaded.asset.status == pb.ASSET_STATUS_AVAILABLE
    listed = await stub.ListAssets(pb.ListAssetsRequest(created_by_task="task-a"), metadata=task)
    assert {a.id for a in listed.assets} == {mine, mine_file}
    events = await _drain_watch(stub, [env.value_id, mine], task)
    assert {e.asset.id for e in events} == {env.value_id, mine}
    # The state machine still decides the rest: a fulfilled promise cannot be failed.
    await expect_error(
        stub.FailAsset(pb.FailAssetRequest(asset_id=mine, reason="late"), metadata=task),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    theirs_now = await stub.GetAsset(pb.GetAssetRequest(asset_id=theirs), metadata=ORCH)
    assert theirs_now.asset.status == pb.ASSET_STATUS_PENDING


async def test_records_and_watch_events_name_who_created_and_changed_them(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    async def pending(task: str) -> pb.Asset:
        request = pb.CreatePendingAssetRequest(task_id=task, label="o", type=pb.ASSET_TYPE_VALUE)
        return (await stub.CreatePendingAsset(request, metadata=ORCH)).asset

    by_task, by_worker, by_admin = await pending("p-1"), await pending("p-2"), await pending("p-3")
    assert (by_task.created_by, by_task.updated_by) == ("orchestrator-1", "orchestrator-1")
    watched = stub.WatchAsset(
        pb.WatchAssetRequest(asset_ids=[by_task.id, by_worker.id, by_admin.id]),
        metadata=ADMIN,
        timeout=10,
    )
    events = aiter(watched)
    snapshots = [await anext(events) for _ in range(3)]
    assert {(e.type, e.asset.updated_by) for e in snapshots} == {
        (pb.WATCH_EVENT_TYPE_SNAPSHOT, "orchestrator-1")
    }

    minted = await stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="p-1"), metadata=ORCH)
    done = await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=by_task.id, value=pb.Value(text="r")),
        metadata=bearer(minted.token),
    )
    assert (done.asset.created_by, done.asset.updated_by) == ("orchestrator-1", "task:p-1")
    failed = await stub.FailAsset(
        pb.FailAssetRequest(asset_id=by_worker.id, reason="oom"),
        metadata=bearer(token_for("worker")),
    )
    assert (failed.asset.created_by, failed.asset.updated_by) == ("orchestrator-1", "worker-1")
    gone = await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=by_admin.id), metadata=ADMIN)
    assert (gone.asset.created_by, gone.asset.updated_by) == ("orchestrator-1", "admin-1")

    changes = [await anext(events) for _ in range(3)]
    assert [(e.type, e.asset.id, e.asset.updated_by) for e in changes] == [
        (pb.WATCH_EVENT_TYPE_CHANGED, by_task.id, "task:p-1"),
        (pb.WATCH_EVENT_TYPE_CHANGED, by_worker.id, "worker-1"),
        (pb.WATCH_EVENT_TYPE_DELETED, by_admin.id, "admin-1"),
    ]
    watched.cancel()
    # GetAsset keeps both names.
    read = await stub.GetAsset(pb.GetAssetRequest(asset_id=by_task.id), metadata=ADMIN)
    assert (read.asset.created_by, read.asset.updated_by) == ("orchestrator-1", "task:p-1")
    made = await _upload(stub, bearer(token_for("worker")), pb.UploadHeader(label="w.bin"))
    assert (made.asset.created_by, made.asset.updated_by) == ("worker-1", "worker-1")


async def _drain_watch(
    stub: pb_grpc.AssetServiceStub, ids: list[str], metadata: tuple[tuple[str, str], ...]
) -> list[pb.WatchAssetResponse]:
    stream = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=ids), metadata=metadata, timeout=10)
    return [e async for e in stream]


async def _upload(
    stub: pb_grpc.AssetServiceStub, metadata: tuple[tuple[str, str], ...], header: pb.UploadHeader
) -> pb.UploadAssetResponse:
    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=header)
        yield pb.UploadAssetRequest(chunk=b"task output")

    return await stub.UploadAsset(requests(), metadata=metadata, timeout=10)


async def test_mint_refuses_a_ttl_over_a_day_and_too_many_inputs(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    await expect_error(
        stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="t", ttl_seconds=86401), metadata=ORCH),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl_seconds is 86401",
    )
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(65)]
    await expect_error(
        stub.MintTaskToken(
            pb.MintTaskTokenRequest(task_id="t", input_asset_ids=ids), metadata=ORCH
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at most 64",
    )
    # 64 inputs still fit in a request header.
    minted = await stub.MintTaskToken(
        pb.MintTaskTokenRequest(task_id="t", input_asset_ids=ids[:64]), metadata=ORCH
    )
    listed = await stub.ListAssets(
        pb.ListAssetsRequest(created_by_task="t"), metadata=bearer(minted.token)
    )
    assert list(listed.assets) == []
    assert SECRET not in minted.token.encode()


async def test_mutations_are_audited_without_secrets(
    stub: pb_grpc.AssetServiceStub, env: Env, secured: tuple[ServerProcess, Path, Path]
) -> None:
    server = secured[0]
    await _value_for(env)
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=env.target_id), metadata=ADMIN)
    line = wait_for_log(server, rf"asset_service\.audit: .*rpc=DeleteAsset .*{env.target_id}")
    assert "principal=admin-1 via=token" in line
    assert "outcome=OK" in line
    await _value_for(env)
    await call_code(
        stub.DeleteAsset(
            pb.DeleteAssetRequest(asset_id=env.target_id), metadata=bearer(token_for("reader"))
        )
    )
    line = wait_for_log(server, rf"audit: principal=reader-1 .*rpc=DeleteAsset .*{env.target_id}")
    assert "outcome=PERMISSION_DENIED" in line
    # An outcome decided by the handler (the state machine) is recorded as such.
    await CALLS["FailAsset"][0](env)
    await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=env.target_id, value=pb.Value(text="v")), metadata=ADMIN
    )
    await call_code(
        stub.FailAsset(pb.FailAssetRequest(asset_id=env.target_id, reason="late"), metadata=ADMIN)
    )
    line = wait_for_log(server, rf"audit: .*rpc=FailAsset subjects={env.target_id} ")
    assert "outcome=FAILED_PRECONDITION" in line
    # A scrub reads stored bytes at the caller's rate and may mark assets: audited too.
    scrub = pb.ScrubAssetsRequest(asset_ids=[env.value_id])
    assert len([r async for r in stub.ScrubAssets(scrub, metadata=ADMIN)]) == 1
    line = wait_for_log(server, r"audit: principal=admin-1 .*rpc=ScrubAssets ")
    assert "outcome=OK" in line
    log = "".join(server.log)
    for role in ROLES:
        assert token_for(role) not in log
        assert hash_token(token_for(role)) not in log
    assert SECRET.decode() not in log


async def test_sighup_reloads_the_tokens_file(
    stub: pb_grpc.AssetServiceStub, secured: tuple[ServerProcess, Path, Path]
) -> None:
    server, _, tokens = secured
    original = tokens.read_text()
    fresh = "fresh-token-for-a-new-reader-0123456789"
    request = pb.ListAssetsRequest(page_size=1)
    await expect_error(
        stub.ListAssets(request, metadata=bearer(fresh)), grpc.StatusCode.UNAUTHENTICATED
    )
    try:
        entry = '[[tokens]]\nprincipal = "new-reader"\nroles = ["reader"]\n'
        tokens.write_text(original + entry + f'sha256 = "{hash_token(fresh)}"\n')
        reloads = sum("reloaded the tokens file" in line for line in server.log)
        server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await asyncio.to_thread(_wait_for_count, server, "reloaded the tokens file", reloads + 1)
        await stub.ListAssets(request, metadata=bearer(fresh))
    finally:
        tokens.write_text(original)
        reloads = sum("reloaded the tokens file" in line for line in server.log)
        server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        await asyncio.to_thread(_wait_for_count, server, "reloaded the tokens file", reloads + 1)
    await expect_error(
        stub.ListAssets(request, metadata=bearer(fresh)), grpc.StatusCode.UNAUTHENTICATED
    )


def _wait_for_count(server: ServerProcess, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while sum(text in line for line in list(server.log)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not logged {count} times")
        time.sleep(0.02)
