"""Helpers of the security tests: tokens files, secrets, secured servers, one call per RPC."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import stored_files
from tests.serverproc import ServerProcess, serving

ROLES = ("reader", "worker", "orchestrator", "admin")
SECRET = b"test-secret-" + b"x" * 40
Metadata = Sequence[tuple[str, str]]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def token_for(role: str) -> str:
    """A fixed token per role (tests only): the file holds only its sha256."""
    return f"test-token-{role}-0123456789abcdefghij"


# Each role's bearer token, as call metadata.
READER, WORKER, ORCH, ADMIN = (bearer(token_for(role)) for role in ROLES)


def tokens_toml(certificates: dict[str, tuple[str, str]] | None = None) -> str:
    """[[tokens]] for every role (principal = role name), and [[certificates]] CN -> role."""
    lines = []
    for role in ROLES:
        digest = hashlib.sha256(token_for(role).encode()).hexdigest()
        lines += ["[[tokens]]", f'principal = "{role}-1"', f'roles = ["{role}"]']
        lines += [f'sha256 = "{digest}"', ""]
    for cn, (principal, role) in (certificates or {}).items():
        lines += ["[[certificates]]", f'common_name = "{cn}"', f'principal = "{principal}"']
        lines += [f'roles = ["{role}"]', ""]
    return "\n".join(lines)


def forged_task_token(task: str, *, expires_in: float, secret: bytes = SECRET) -> str:
    """A task token signed with `secret` that expires `expires_in` seconds from now."""
    now = int(time.time())
    claims = {
        "iss": "asset-service",
        "sub": f"task:{task}",
        "task": task,
        "inputs": [],
        "by": "test",
        "iat": now - 3600,
        "exp": int(now + expires_in),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class SecureFiles:
    folder: Path
    tokens: Path | None = None
    secret: Path | None = None
    args: list[str] = field(default_factory=list)

    def with_tokens(self, certificates: dict[str, tuple[str, str]] | None = None) -> SecureFiles:
        self.tokens = self.folder / "tokens.toml"
        self.tokens.write_text(tokens_toml(certificates))
        self.args += ["--tokens-file", str(self.tokens)]
        return self

    def with_secret(self) -> SecureFiles:
        self.secret = self.folder / "task-secret"
        self.secret.write_bytes(SECRET + b"\n")
        os.chmod(self.secret, 0o600)
        self.args += ["--token-secret-file", str(self.secret)]
        return self


def server_process(
    root: Path, import_root: Path, args: Sequence[str], env: dict[str, str] | None = None
) -> ServerProcess:
    """A server (not started yet) on `root`, with a sqlite database of its own there."""
    return ServerProcess(
        root / "data",
        f"sqlite:///{root / 'assets.db'}",
        import_roots=[import_root],
        extra_args=list(args),
        env=env,
    )


def start_server(
    root: Path, import_root: Path, args: Sequence[str], env: dict[str, str] | None = None
) -> ServerProcess:
    return server_process(root, import_root, args, env).start()


@contextlib.contextmanager
def token_server(base: Path, *extra_args: str) -> Iterator[ServerProcess]:
    """A server on `base` that takes bearer tokens (base/tokens.toml, every role of
    token_for) and task tokens (base/task-secret), importing from base/imports; stopped on
    leaving."""
    imports = base / "imports"
    imports.mkdir(exist_ok=True)
    files = SecureFiles(base).with_tokens().with_secret()
    with serving(server_process(base, imports, [*files.args, *extra_args])) as server:
        yield server


async def snapshot(admin: pb_grpc.AssetServiceStub, root: Path) -> tuple[object, ...]:
    """Every record's id and revision, and every stored file: what a refused call must not touch."""
    assets, token = [], ""
    while True:
        page = await admin.ListAssets(
            pb.ListAssetsRequest(page_size=1000, page_token=token),
            metadata=bearer(token_for("admin")),
        )
        assets += page.assets
        token = page.next_page_token
        if not token:
            break
    return tuple(sorted((a.id, a.revision, a.status) for a in assets)), tuple(stored_files(root))


@dataclass
class Env:
    """What a call needs that an admin prepared beforehand."""

    admin: pb_grpc.AssetServiceStub
    import_root: Path
    value_id: str = ""
    target_id: str = ""  # a fresh asset the call would change (pending, or to delete)
    path: str = ""


Prepare = Callable[[Env], Awaitable[None]]
Call = Callable[[pb_grpc.AssetServiceStub, Metadata, Env], Awaitable[object]]


async def _pending(env: Env, type_: int = pb.ASSET_TYPE_VALUE, **fields: Any) -> None:
    made = await env.admin.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="table-task", label="out", type=type_, **fields),
        metadata=ADMIN,
    )
    env.target_id = made.asset.id


async def _value(env: Env) -> None:
    made = await env.admin.CreateValueAsset(
        pb.CreateValueAssetRequest(label="doomed", value=pb.Value(text="bye")), metadata=ADMIN
    )
    env.target_id = made.asset.id


async def _held(env: Env) -> None:
    await _value(env)
    await env.admin.PlaceHold(
        pb.PlaceHoldRequest(asset_id=env.target_id, owner="table", reason="kept"), metadata=ADMIN
    )


async def _file(env: Env) -> None:
    path = env.import_root / f"f-{time.monotonic_ns()}.txt"
    path.write_text("adopt me")
    env.path = str(path)


async def _nothing(env: Env) -> None:
    return None


async def _upload(stub: pb_grpc.AssetServiceStub, md: Metadata, env: Env) -> object:
    async def requests():  # type: ignore[no-untyped-def]
        yield pb.UploadAssetRequest(header=pb.UploadHeader(pending_asset_id=env.target_id))
        yield pb.UploadAssetRequest(chunk=b"uploaded bytes")

    return await stub.UploadAsset(requests(), metadata=md, timeout=10)


async def _query_upload(stub: pb_grpc.AssetServiceStub, md: Metadata, env: Env) -> object:
    """A resumable upload of the caller's own, then QueryUpload of it (a caller that may
    not upload is still answered by QueryUpload's own rule)."""
    upload_id = uuid.uuid4().hex

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.UploadAssetRequest(header=pb.UploadHeader(label="r.bin", upload_id=upload_id))
        yield pb.UploadAssetRequest(chunk=b"resumable bytes")

    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.UploadAsset(requests(), metadata=md, timeout=10)
    return await stub.QueryUpload(pb.QueryUploadRequest(upload_id=upload_id), metadata=md)


def _call(rpc: str, request: Callable[[Env], Any]) -> Call:
    """Sends the one request of an RPC; a stream's answer is read to its end."""
    streams = pb.DESCRIPTOR.services_by_name["AssetService"].methods_by_name[rpc].server_streaming

    async def call(stub: pb_grpc.AssetServiceStub, md: Metadata, env: Env) -> object:
        if streams:
            return [m async for m in getattr(stub, rpc)(request(env), metadata=md, timeout=10)]
        return await getattr(stub, rpc)(request(env), metadata=md)

    return call


# The request each RPC of one request is called with, after what it needs was prepared.
_REQUESTS: dict[str, tuple[Prepare, Callable[[Env], Any]]] = {
    "GetAsset": (_nothing, lambda e: pb.GetAssetRequest(asset_id=e.value_id)),
    "BatchGetAssets": (_nothing, lambda e: pb.BatchGetAssetsRequest(asset_ids=[e.value_id])),
    "ListAssets": (_nothing, lambda e: pb.ListAssetsRequest(page_size=5)),
    "WatchAsset": (_nothing, lambda e: pb.WatchAssetRequest(asset_ids=[e.value_id])),
    "ReadAsset": (_nothing, lambda e: pb.ReadAssetRequest(asset_id=e.value_id)),
    "GetManifest": (
        _nothing,
        lambda e: pb.GetManifestRequest(asset_mappings={"note": e.value_id}),
    ),
    "FulfillAsset": (
        _pending,
        lambda e: pb.FulfillAssetRequest(asset_id=e.target_id, value=pb.Value(text="done")),
    ),
    "FailAsset": (_pending, lambda e: pb.FailAssetRequest(asset_id=e.target_id, reason="no")),
    "RenewLease": (
        lambda e: _pending(e, lease_seconds=600),
        lambda e: pb.RenewLeaseRequest(asset_id=e.target_id),
    ),
    "CreatePendingAsset": (
        _nothing,
        lambda e: pb.CreatePendingAssetRequest(task_id="t-new", label="promise"),
    ),
    "GetOrCreatePendingAsset": (
        _nothing,
        lambda e: pb.GetOrCreatePendingAssetRequest(
            key="roles-key", promise=pb.CreatePendingAssetRequest(task_id="t-new", label="promise")
        ),
    ),
    "CreateValueAsset": (
        _nothing,
        lambda e: pb.CreateValueAssetRequest(label="v", value=pb.Value(text="hi")),
    ),
    "RegisterFile": (_file, lambda e: pb.RegisterFileRequest(path=e.path)),
    "MintTaskToken": (
        _nothing,
        lambda e: pb.MintTaskTokenRequest(task_id="t-1", input_asset_ids=[e.value_id]),
    ),
    "DeleteAsset": (_value, lambda e: pb.DeleteAssetRequest(asset_id=e.target_id)),
    "ScrubAssets": (_nothing, lambda e: pb.ScrubAssetsRequest(asset_ids=[e.value_id])),
    "SetExpiry": (_value, lambda e: pb.SetExpiryRequest(asset_id=e.target_id, ttl_seconds=3600)),
    "PlaceHold": (
        _value,
        lambda e: pb.PlaceHoldRequest(asset_id=e.target_id, owner="o", reason="r"),
    ),
    "ReleaseHold": (_held, lambda e: pb.ReleaseHoldRequest(asset_id=e.target_id, owner="table")),
    "GetUsage": (_nothing, lambda e: pb.GetUsageRequest(group="tag")),
}

# One call per RPC, valid for a caller allowed to make it (so an allowed cell answers OK).
CALLS: dict[str, tuple[Prepare, Call]] = {
    "UploadAsset": (lambda e: _pending(e, pb.ASSET_TYPE_FILE), _upload),
    "QueryUpload": (_nothing, _query_upload),
    **{rpc: (prepare, _call(rpc, request)) for rpc, (prepare, request) in _REQUESTS.items()},
}

# The table, written out independently of the server's RULES.
READER_RPCS = {
    "GetAsset",
    "BatchGetAssets",
    "ListAssets",
    "WatchAsset",
    "ReadAsset",
    "GetManifest",
    "GetUsage",
}
WORKER_RPCS = READER_RPCS | {
    "UploadAsset",
    "QueryUpload",
    "FulfillAsset",
    "FailAsset",
    "RenewLease",
}
ORCHESTRATOR_RPCS = WORKER_RPCS | {
    "CreatePendingAsset",
    "GetOrCreatePendingAsset",
    "CreateValueAsset",
    "RegisterFile",
    "MintTaskToken",
    "SetExpiry",
    "PlaceHold",
    "ReleaseHold",
}
ALLOWED = {
    "reader": READER_RPCS,
    "worker": WORKER_RPCS,
    "orchestrator": ORCHESTRATOR_RPCS,
    "admin": set(CALLS),
}


async def call_code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
