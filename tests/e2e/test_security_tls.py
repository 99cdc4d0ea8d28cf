"""TLS, mTLS, certificate reload, the loopback rule and the Python client, on real servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from asset_client import (
    AssetClient,
    AssetStatus,
    AssetType,
    AsyncAssetClient,
    FailedPreconditionError,
    PermissionDeniedError,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import expect_error
from tests.e2e.security_helpers import (
    SecureFiles,
    bearer,
    server_process,
    token_for,
    token_server,
)
from tests.pki import CA, Pair
from tests.serverproc import ServerProcess, serving

HEALTH = health_pb2.HealthCheckRequest()


def tls_args(folder: Path, ca: CA, pair: Pair | None = None) -> list[str]:
    cert, key = (pair or ca.server()).write(folder, "server")
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def tls_channel(server: ServerProcess, ca: CA, client: Pair | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.pem, client.key if client else None, client.cert if client else None
    )
    return grpc.aio.secure_channel(server.address, creds)


@pytest.fixture(scope="module")
def pki() -> CA:
    return CA("server CA")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: CA) -> Iterator[ServerProcess]:
    """TLS, bearer tokens and task tokens."""
    base = tmp_path_factory.mktemp("tls")
    with token_server(base, *tls_args(base, pki)) as server:
        yield server


async def test_tls_handshake_and_token(tls_server: ServerProcess, pki: CA) -> None:
    async with tls_channel(tls_server, pki) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.AssetServiceStub(channel)
        await stub.ListAssets(pb.ListAssetsRequest(), metadata=bearer(token_for("reader")))
        await expect_error(stub.ListAssets(pb.ListAssetsRequest()), grpc.StatusCode.UNAUTHENTICATED)


async def test_plaintext_is_refused_on_a_tls_port(tls_server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(tls_server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_trusting_another_ca_is_refused(tls_server: ServerProcess) -> None:
    async with tls_channel(tls_server, CA("stranger")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_python_clients_over_tls_with_a_token(tls_server: ServerProcess, pki: CA) -> None:
    async with AsyncAssetClient(
        tls_server.address, root_certificates=pki.pem, token=token_for("orchestrator")
    ) as client:
        made = await client.create_value("greeting", text="hello")
        assert (await client.get(made.id)).value is not None
        promise = await client.create_pending("task-c", "out", type=AssetType.VALUE)
        minted = await client.mint_task_token("task-c", [made.id], ttl_seconds=120)
    async with AsyncAssetClient(
        tls_server.address, root_certificates=pki.pem, token=minted.token
    ) as worker:
        assert (await worker.get(made.id)).label == "greeting"
        done = await worker.fulfill(promise.id, value="result")
        assert done.status is AssetStatus.AVAILABLE
        with pytest.raises(PermissionDeniedError, match="scoped to task task-c"):
            await worker.create_value("nope", text="x")
    calls = []

    def source() -> str:
        calls.append(1)
        return token_for("reader")

    def sync_use() -> None:
        with AssetClient(tls_server.address, root_certificates=pki.pem, token=source) as sync:
            assert sync.get(made.id).label == "greeting"
            with pytest.raises(PermissionDeniedError):
                sync.delete(made.id)

    await asyncio.to_thread(sync_use)
    assert len(calls) >= 2  # asked before each call


async def test_python_client_sends_a_token_in_plaintext_only_to_loopback(
    tmp_path: Path,
) -> None:
    (tmp_path / "imports").mkdir()
    files = SecureFiles(tmp_path).with_tokens()
    with serving(server_process(tmp_path, tmp_path / "imports", files.args)) as server:
        async with AsyncAssetClient(server.address, token=token_for("orchestrator")) as client:
            assert [a async for a in client.list()] == []
            # Without --token-secret-file, minting says what to configure.
            with pytest.raises(FailedPreconditionError, match="--token-secret-file"):
                await client.mint_task_token("task-1")


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, pki: CA
) -> Iterator[tuple[ServerProcess, CA]]:
    base = tmp_path_factory.mktemp("mtls")
    (base / "imports").mkdir()
    clients = CA("client CA")
    mapped = {"worker-7.example": ("worker-7", "reader")}
    files = SecureFiles(base).with_tokens(mapped)
    args = [*files.args, *tls_args(base, pki)]
    args += ["--tls-client-ca", str(clients.write(base / "clients-ca.pem"))]
    with serving(server_process(base, base / "imports", args)) as server:
        yield server, clients


async def test_mtls_refuses_no_or_a_foreign_client_certificate(
    mtls_server: tuple[ServerProcess, CA], pki: CA
) -> None:
    server, _ = mtls_server
    for client in (None, CA("rogue").client("worker-7.example")):
        async with tls_channel(server, pki, client) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_maps_a_certificate_to_its_roles(
    mtls_server: tuple[ServerProcess, CA], pki: CA
) -> None:
    server, clients = mtls_server
    async with tls_channel(server, pki, clients.client("worker-7.example")) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        await stub.ListAssets(pb.ListAssetsRequest())
        await expect_error(
            stub.CreateValueAsset(pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x"))),
            grpc.StatusCode.PERMISSION_DENIED,
            "worker-7 (roles: reader)",
        )
    async with tls_channel(server, pki, clients.client("unknown.example")) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        # A verified certificate without a mapping has no role at all...
        await expect_error(
            stub.ListAssets(pb.ListAssetsRequest()),
            grpc.StatusCode.PERMISSION_DENIED,
            "cn:unknown.example (roles: none)",
        )
        # ...but may carry a token, whose roles (and name, in the record) then apply.
        made = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x")),
            metadata=bearer(token_for("orchestrator")),
        )
        assert made.asset.created_by == "orchestrator-1"


async def test_rotated_certificate_serves_new_connections_and_keeps_open_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "imports").mkdir()
    old_ca, new_ca = CA("before"), CA("after")
    files = SecureFiles(tmp_path).with_tokens()
    with serving(
        server_process(tmp_path, tmp_path / "imports", [*files.args, *tls_args(tmp_path, old_ca)])
    ) as server:
        async with tls_channel(server, old_ca) as before:
            health = health_pb2_grpc.HealthStub(before)
            await health.Check(HEALTH, timeout=10)
            # A watch that stays open across the rotation.
            stub = pb_grpc.AssetServiceStub(before)
            reader = bearer(token_for("orchestrator"))
            made = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id="t", label="out", type=pb.ASSET_TYPE_VALUE),
                metadata=reader,
            )
            watch = stub.WatchAsset(
                pb.WatchAssetRequest(asset_ids=[made.asset.id]), metadata=reader, timeout=30
            )
            first = await watch.read()
            assert first.type == pb.WATCH_EVENT_TYPE_SNAPSHOT

            new_ca.server().write(tmp_path, "server")  # no signal: the change is seen
            async with tls_channel(server, new_ca) as after:
                answer = await health_pb2_grpc.HealthStub(after).Check(HEALTH, timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            async with tls_channel(server, old_ca) as stale:
                with pytest.raises(grpc.aio.AioRpcError):
                    await health_pb2_grpc.HealthStub(stale).Check(HEALTH, timeout=5)

            # The connection made before the rotation still works, and so does its watch.
            await health.Check(HEALTH, timeout=10)
            await stub.FulfillAsset(
                pb.FulfillAssetRequest(asset_id=made.asset.id, value=pb.Value(text="v")),
                metadata=bearer(token_for("worker")),
            )
            changed = await watch.read()
            assert changed.asset.status == pb.ASSET_STATUS_AVAILABLE
        assert any("TLS certificate reloaded" in line for line in server.log)


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "asset_service", "--storage-root", str(tmp_path / "d")]
    command += ["--database-url", "memory://", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_non_loopback_without_security_is_refused(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--listen", "0.0.0.0:0")
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in done.stderr
    assert "TLS (--tls-cert and --tls-key) and authentication" in done.stderr
    assert "--insecure" in done.stderr
    # Tokens alone are not enough either: they would cross the network in clear.
    files = SecureFiles(tmp_path).with_tokens()
    done = _serve(tmp_path, "--listen", "0.0.0.0:0", *files.args)
    assert done.returncode == 2
    assert "without TLS (--tls-cert and --tls-key):" in done.stderr


def test_insecure_allows_non_loopback_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "imports").mkdir()
    with serving(
        server_process(tmp_path, tmp_path / "imports", ["--listen", "0.0.0.0:0", "--insecure"])
    ) as server:
        log = "".join(server.log)
        # The port it bound, not the :0 it was given.
        assert f"every client that can reach 0.0.0.0:{server.port} may read" in log
        assert "plaintext, no TLS" in log
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.AssetServiceStub(channel).ListAssets(pb.ListAssetsRequest(), timeout=10)


def test_non_loopback_with_tls_and_tokens_starts(tmp_path: Path, pki: CA) -> None:
    (tmp_path / "imports").mkdir()
    files = SecureFiles(tmp_path).with_tokens()
    args = ["--listen", "0.0.0.0:0", *files.args, *tls_args(tmp_path, pki)]
    with serving(server_process(tmp_path, tmp_path / "imports", args)) as server:
        assert "no authentication configured" not in "".join(server.log)


def test_default_server_says_it_is_unauthenticated(server: ServerProcess) -> None:
    assert any("no authentication configured" in line for line in server.log)


def test_readme_secure_grpcurl_block(tls_server: ServerProcess, pki: CA, tmp_path: Path) -> None:
    """README's grpcurl commands against TLS + tokens (a task token fulfills its promise)."""
    from tests.e2e.test_grpcurl import ROOT, grpcurl_binary

    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- grpcurl-secure:start -->\n```bash\n", "```\n<!-- grpcurl-secure:end -->"
    block = readme[readme.index(start) + len(start) : readme.index(end)]
    ca = pki.write(tmp_path / "ca.pem")
    bin_dir = Path(grpcurl_binary()).parent
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "ADDR": f"localhost:{tls_server.port}",
        "CA": str(ca),
        "TOKEN": token_for("orchestrator"),
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"status": "ASSET_STATUS_AVAILABLE"' in done.stdout
