"""docs/security.md's remaining claims, each against a real secured server: headers, reloads."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.security.tokens import hash_token
from tests.e2e.helpers import expect_error
from tests.e2e.security_helpers import (
    ADMIN,
    ORCH,
    READER,
    SECRET,
    Metadata,
    SecureFiles,
    bearer,
    snapshot,
    start_server,
    token_for,
    token_server,
)
from tests.pki import CA, Pair
from tests.serverproc import ServerProcess

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
HEALTH = health_pb2.HealthCheckRequest()


def server_with(tmp_path: Path, *args: str) -> ServerProcess:
    (tmp_path / "imports").mkdir(exist_ok=True)
    return start_server(tmp_path, tmp_path / "imports", list(args))


def logged(server: ServerProcess, pattern: str) -> list[str]:
    return [line for line in list(server.log) if re.search(pattern, line)]


def wait_logged(server: ServerProcess, pattern: str, count: int, timeout: float = 10) -> list[str]:
    """The lines matching `pattern` once there are `count` of them (or fail, bounded)."""
    deadline = time.monotonic() + timeout
    while len(found := logged(server, pattern)) < count:
        if time.monotonic() > deadline:
            tail = "".join(server.log[-15:])
            raise AssertionError(f"{pattern!r} logged {len(found)} times, not {count}:\n{tail}")
        time.sleep(0.02)
    return found


async def sighup(server: ServerProcess, pattern: str) -> str:
    """Send SIGHUP and return the line matching `pattern` that the reload wrote."""
    before = len(logged(server, pattern))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    found = await asyncio.to_thread(wait_logged, server, pattern, before + 1)
    return found[-1]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with token_server(tmp_path_factory.mktemp("claims")) as server:
        yield server


@pytest.fixture
async def stub(secured: ServerProcess) -> AsyncIterator[pb_grpc.AssetServiceStub]:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        yield pb_grpc.AssetServiceStub(channel)


# --- sending credentials --------------------------------------------------------------


async def test_several_authorization_headers_are_refused(
    stub: pb_grpc.AssetServiceStub, secured: ServerProcess
) -> None:
    """Two entries are refused whatever they hold, even two valid ones: which one would win
    is not for the server to guess."""
    minted = await stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="t"), metadata=ORCH)
    admin, reader = ADMIN[0], READER[0]
    pairs = {
        "the same token twice": (admin, admin),
        "two valid tokens": (reader, admin),
        "valid, then unknown": (admin, ("authorization", "Bearer not-a-known-token")),
        "unknown, then valid": (("authorization", "Bearer not-a-known-token"), admin),
        "a token and a task token": (admin, ("authorization", f"Bearer {minted.token}")),
    }
    data = secured.root
    before = await snapshot(stub, data)
    for case, metadata in pairs.items():
        request = pb.CreateValueAssetRequest(label=case, value=pb.Value(text="x"))
        await expect_error(
            stub.CreateValueAsset(request, metadata=metadata),
            UNAUTHENTICATED,
            "send one authorization header, not several",
        )
    assert await snapshot(stub, data) == before
    # Each of them alone is accepted.
    for metadata in ((admin,), (reader,)):
        await stub.ListAssets(pb.ListAssetsRequest(page_size=1), metadata=metadata)


async def test_the_bearer_scheme_is_accepted_in_any_case(stub: pb_grpc.AssetServiceStub) -> None:
    minted = await stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="cased"), metadata=ORCH)
    listing = pb.ListAssetsRequest(created_by_task="cased", page_size=1)
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        for token in (token_for("reader"), minted.token):
            metadata = (("authorization", f"{scheme} {token}"),)
            await stub.ListAssets(listing, metadata=metadata)
    # The scheme is checked, only its case is free.
    for value in (f"Bearer{token_for('reader')}", f"Basic {token_for('reader')}", "Bearer "):
        await expect_error(
            stub.ListAssets(listing, metadata=(("authorization", value),)),
            UNAUTHENTICATED,
            'must be "Bearer <token>"',
        )


# --- task tokens: a missing asset and another task's asset look alike ------------------


def _upload(stub: pb_grpc.AssetServiceStub, md: Metadata, asset_id: str) -> Awaitable[object]:
    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(pending_asset_id=asset_id))
        yield pb.UploadAssetRequest(chunk=b"bytes")

    return stub.UploadAsset(requests(), metadata=md, timeout=10)


async def _drain(stream: AsyncIterator[object]) -> list[object]:
    return [m async for m in stream]


TaskCall = Callable[[pb_grpc.AssetServiceStub, Metadata, str], Awaitable[object]]
TASK_CALLS: dict[str, TaskCall] = {
    "GetAsset": lambda s, md, i: s.GetAsset(pb.GetAssetRequest(asset_id=i), metadata=md),
    "BatchGetAssets": lambda s, md, i: s.BatchGetAssets(
        pb.BatchGetAssetsRequest(asset_ids=[i]), metadata=md
    ),
    "ReadAsset": lambda s, md, i: _drain(
        s.ReadAsset(pb.ReadAssetRequest(asset_id=i), metadata=md, timeout=10)
    ),
    "WatchAsset": lambda s, md, i: _drain(
        s.WatchAsset(pb.WatchAssetRequest(asset_ids=[i]), metadata=md, timeout=10)
    ),
    "GetManifest": lambda s, md, i: s.GetManifest(
        pb.GetManifestRequest(asset_mappings={"in": i}), metadata=md
    ),
    "FulfillAsset": lambda s, md, i: s.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=i, value=pb.Value(text="hijack")), metadata=md
    ),
    "FailAsset": lambda s, md, i: s.FailAsset(
        pb.FailAssetRequest(asset_id=i, reason="x"), metadata=md
    ),
    "RenewLease": lambda s, md, i: s.RenewLease(pb.RenewLeaseRequest(asset_id=i), metadata=md),
    "UploadAsset": _upload,
}


async def _answer(call: Awaitable[object], asset_id: str) -> tuple[str, str, tuple[object, ...]]:
    """The status code, message and trailers of a refused call, with `asset_id` blanked."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    trailers = tuple(
        (k, v.replace(asset_id.encode(), b"<id>") if isinstance(v, bytes) else v)
        for k, v in (err.trailing_metadata() or ())
    )
    return err.code().name, (err.details() or "").replace(asset_id, "<id>"), trailers


async def test_a_missing_asset_and_another_tasks_asset_are_answered_alike(
    stub: pb_grpc.AssetServiceStub,
) -> None:
    """For a task token, an id that names nothing, one of another task's promises, another
    task's finished output, an unrelated asset and a deleted one all get the same code and
    the same words: the answer cannot tell which exist."""

    async def promise(task: str, type_: int, lease: int = 0) -> str:
        request = pb.CreatePendingAssetRequest(
            task_id=task, label="out", type=type_, lease_seconds=lease
        )
        return (await stub.CreatePendingAsset(request, metadata=ORCH)).asset.id

    theirs = await promise("task-b", pb.ASSET_TYPE_FILE, lease=600)
    theirs_done = await promise("task-b", pb.ASSET_TYPE_VALUE)
    await stub.FulfillAsset(
        pb.FulfillAssetRequest(asset_id=theirs_done, value=pb.Value(text="b's result")),
        metadata=ORCH,
    )
    unrelated = (
        await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="private", value=pb.Value(text="x")), metadata=ORCH
        )
    ).asset.id
    deleted = await promise("task-b", pb.ASSET_TYPE_VALUE)
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=deleted), metadata=ADMIN)
    minted = await stub.MintTaskToken(pb.MintTaskTokenRequest(task_id="task-a"), metadata=ORCH)
    task = bearer(minted.token)
    ids = {
        "never existed": str(uuid.uuid4()),
        "another task's promise": theirs,
        "another task's output": theirs_done,
        "no task's asset": unrelated,
        "deleted": deleted,
    }
    for rpc, call in TASK_CALLS.items():
        answers = {what: await _answer(call(stub, task, i), i) for what, i in ids.items()}
        missing = answers["never existed"]
        assert missing[0] == DENIED.name, (rpc, missing)
        assert "scoped to task task-a" in missing[1] and "task-b" not in missing[1], missing
        for what, answer in answers.items():
            assert answer == missing, f"{rpc}: {what} {answer} differs from a missing asset's"


# --- the audit log --------------------------------------------------------------------

AUDIT_REFUSED = r"asset_service\.audit: principal=unauthenticated via=- rpc=CreatePendingAsset"


async def test_unauthenticated_audit_lines_are_rate_limited_and_others_kept(
    tmp_path: Path,
) -> None:
    """Anyone can cause a refused-as-unauthenticated line, so those pass 5 per 10 s (the
    fifth says the rest are suppressed, then counted); an authenticated caller's lines are
    all written, refusals included."""
    files = SecureFiles(tmp_path).with_tokens()
    server = server_with(tmp_path, *files.args)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            request = pb.CreatePendingAssetRequest(task_id="t", label="out")
            nobody = ((), bearer("not-a-known-token"), (("authorization", "Basic eA=="),))
            for i in range(15):
                await expect_error(
                    stub.CreatePendingAsset(request, metadata=nobody[i % 3]), UNAUTHENTICATED
                )
            for _ in range(12):
                await expect_error(stub.CreatePendingAsset(request, metadata=READER), DENIED)
            made = await stub.CreatePendingAsset(request, metadata=ORCH)
            # The orchestrator's line comes after every other: once it is there, all are.
            await asyncio.to_thread(wait_logged, server, rf"audit: .*{made.asset.id}", 1)
        refused = logged(server, AUDIT_REFUSED)
        assert len(refused) == 5, refused
        assert all("outcome=UNAUTHENTICATED" in line for line in refused)
        assert "[more like this are suppressed for 10s, then counted]" in refused[-1]
        readers = logged(server, r"audit: principal=reader-1 via=token rpc=CreatePendingAsset")
        assert len(readers) == 12 and all("outcome=PERMISSION_DENIED" in r for r in readers)
        assert not any("suppressed" in line for line in readers)
    finally:
        server.stop()


# --- SIGHUP: tokens file, token secret -------------------------------------------------

RELOADED_TOKENS = r"reloaded the tokens file"
KEPT_TOKENS = r"kept the previous tokens: "


async def test_sighup_with_a_broken_tokens_file_keeps_the_previous_one(tmp_path: Path) -> None:
    files = SecureFiles(tmp_path).with_tokens()
    assert files.tokens is not None
    good = files.tokens.read_text()
    newcomer = "a-token-only-a-broken-file-would-grant-0123"
    entry = '[[tokens]]\nprincipal = "newcomer"\nroles = ["admin"]\n'
    entry += f'sha256 = "{hash_token(newcomer)}"\n'
    broken = {
        "not TOML": (good + entry + "[[tokens\n", "is not valid TOML"),
        "a clear token": (good + entry + f'token = "{newcomer}"\n', "unknown keys ['token']"),
        "a bad hash": (good + entry.replace(hash_token(newcomer), "beef"), "64 lower-case hex"),
        "an unknown role": (good + entry.replace('"admin"', '"root"'), "unknown role 'root'"),
        "missing": (None, "cannot read the tokens file"),
    }
    server = server_with(tmp_path, *files.args)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            listing = pb.ListAssetsRequest(page_size=1)
            await stub.ListAssets(listing, metadata=READER)
            for case, (text, words) in broken.items():
                if text is None:
                    files.tokens.unlink()
                else:
                    files.tokens.write_text(text)
                line = await sighup(server, KEPT_TOKENS)
                assert words in line, (case, line)
                # The previous table still answers: old tokens in, the newcomer out.
                await stub.ListAssets(listing, metadata=READER)
                await expect_error(
                    stub.ListAssets(listing, metadata=bearer(newcomer)), UNAUTHENTICATED
                )
            assert not logged(server, RELOADED_TOKENS)
            # Once the file is good again, it is what counts.
            files.tokens.write_text(good + entry)
            await sighup(server, RELOADED_TOKENS)
            await stub.ListAssets(listing, metadata=bearer(newcomer))
    finally:
        server.stop()


async def test_sighup_reloads_the_token_secret_file(tmp_path: Path) -> None:
    """Rotation as docs/security.md describes it: a new secret first (it signs, the old one
    still verifies), then the old one removed (its tokens are refused); a secret file that
    does not load keeps the previous secrets."""
    files = SecureFiles(tmp_path).with_tokens().with_secret()
    assert files.secret is not None
    new_secret = b"the-next-secret-" + b"y" * 40
    server = server_with(tmp_path, *files.args)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)

            async def mint() -> str:
                minted = await stub.MintTaskToken(
                    pb.MintTaskTokenRequest(task_id="t"), metadata=ORCH
                )
                return str(minted.token)

            async def accepted(token: str) -> None:
                listing = pb.ListAssetsRequest(created_by_task="t", page_size=1)
                await stub.ListAssets(listing, metadata=bearer(token))

            async def refused(token: str) -> None:
                listing = pb.ListAssetsRequest(created_by_task="t", page_size=1)
                await expect_error(
                    stub.ListAssets(listing, metadata=bearer(token)), UNAUTHENTICATED
                )

            old = await mint()
            jwt.decode(old, SECRET, algorithms=["HS256"], options={"verify_aud": False})

            files.secret.write_bytes(new_secret + b"\n" + SECRET + b"\n")
            await sighup(server, r"reloaded the token secret file")
            fresh = await mint()
            jwt.decode(fresh, new_secret, algorithms=["HS256"])  # signed by the first line
            await accepted(old)
            await accepted(fresh)

            files.secret.write_bytes(new_secret + b"\n")
            await sighup(server, r"reloaded the token secret file")
            await refused(old)
            await accepted(fresh)

            for bad in (b"too-short\n", b""):
                files.secret.write_bytes(bad)
                await sighup(server, r"kept the previous token secrets: ")
                await accepted(fresh)
                await refused(old)
            files.secret.unlink()
            await sighup(server, r"kept the previous token secrets: ")
            await accepted(fresh)
    finally:
        server.stop()


# --- SIGHUP: TLS files, and a rotation caught half-way ----------------------------------


def tls_channel(server: ServerProcess, ca: CA, client: Pair | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        ca.pem, client.key if client else None, client.cert if client else None
    )
    return grpc.aio.secure_channel(server.address, creds)


async def handshake_ok(server: ServerProcess, ca: CA, client: Pair | None = None) -> bool:
    """Whether a new connection trusting `ca` (with `client`'s certificate) is served."""
    async with tls_channel(server, ca, client) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(HEALTH, timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


def replace(path: Path, data: bytes) -> None:
    staging = path.with_name(path.name + ".new")
    staging.write_bytes(data)
    staging.replace(path)


async def test_sighup_reloads_the_tls_files(tmp_path: Path) -> None:
    """SIGHUP re-reads the certificate, its key and the client CA at once, before any new
    handshake would have noticed the change."""
    server_ca, next_ca = CA("server CA"), CA("next server CA")
    clients, next_clients = CA("client CA"), CA("next client CA")
    files = SecureFiles(tmp_path).with_tokens({"w.example": ("w", "reader")})
    cert, key = server_ca.server().write(tmp_path, "server")
    client_ca = clients.write(tmp_path / "clients.pem")
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)]
    server = server_with(tmp_path, *files.args, *args)
    try:
        old_client, new_client = clients.client("w.example"), next_clients.client("w.example")
        assert await handshake_ok(server, server_ca, old_client)
        assert not await handshake_ok(server, server_ca, new_client)

        next_ca.server("localhost").write(tmp_path, "server")
        next_clients.write(client_ca)
        line = await sighup(server, r"TLS certificate reloaded")
        assert "CN=localhost" in line
        assert await handshake_ok(server, next_ca, new_client)
        assert not await handshake_ok(server, server_ca, new_client)
        assert not await handshake_ok(server, next_ca, old_client)
        # Nothing changed since: a second SIGHUP says so.
        await sighup(server, r"TLS files unchanged")
    finally:
        server.stop()


async def test_a_key_and_certificate_that_do_not_match_are_refused_mid_rotation(
    tmp_path: Path,
) -> None:
    """The certificate replaced, its key not yet: new connections keep the previous pair
    (with or without SIGHUP), and the new pair applies once the key has followed."""
    old_ca, new_ca = CA("before"), CA("after")
    files = SecureFiles(tmp_path).with_tokens()
    cert, key = old_ca.server().write(tmp_path, "server")
    server = server_with(tmp_path, *files.args, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert await handshake_ok(server, old_ca)
        rotated = new_ca.server()
        replace(cert, rotated.cert)  # half-way: the new certificate with the old key
        # Without a signal, the next handshake sees the change and keeps the previous pair.
        assert await handshake_ok(server, old_ca)
        assert not await handshake_ok(server, new_ca)
        warning = logged(server, r"TLS files changed but cannot be used yet")
        assert warning and "does not belong to the certificate" in warning[-1], warning
        line = await sighup(server, r"kept the previous TLS certificate: ")
        assert f"--tls-key {key} does not belong to the certificate in --tls-cert {cert}" in line
        assert await handshake_ok(server, old_ca)
        assert not logged(server, r"TLS certificate reloaded")

        replace(key, rotated.key)  # the rotation completes
        assert await handshake_ok(server, new_ca)
        assert not await handshake_ok(server, old_ca)
        assert len(logged(server, r"TLS certificate reloaded")) == 1
    finally:
        server.stop()
