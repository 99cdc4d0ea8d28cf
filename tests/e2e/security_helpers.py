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


async def _pending(env: Env, type_: int = pb.ASSET_TYPE_VALUE) -> None:
    made = await env.admin.CreatePendingAsset(
        pb.CreatePendingAssetRequest(task_id="table-task", label="out", type=type_),
        metadata=bearer(token_for("admin")),
    )
    env.target_id = made.asset.id


async def _leased(env: Env) -> None:
    made = await env.admin.CreatePendingAsset(
        pb.CreatePendingAssetRequest(
            task_id="table-task", label="out", type=pb.ASSET_TYPE_VALUE, lease_seconds=600
        ),
        metadata=bearer(token_for("admin")),
    )
    env.target_id = made.asset.id


async def _value(env: Env) -> None:
    made = await env.admin.CreateValueAsset(
        pb.CreateValueAssetRequest(label="doomed", value=pb.Value(text="bye")),
        metadata=bearer(token_for("admin")),
    )
    env.target_id = made.asset.id


async def _held(env: Env) -> None:
    await _value(env)
    await env.admin.PlaceHold(
        pb.PlaceHoldRequest(asset_id=env.target_id, owner="table", reason="kept"),
        metadata=bearer(token_for("admin")),
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


async def _drain(stream: object) -> list[object]:
    return [m async for m in stream]  # type: ignore[attr-defined]


# One call per RPC, valid for a caller allowed to make it (so an allowed cell answers OK).
CALLS: dict[str, tuple[Prepare, Call]] = {
    "GetAsset": (
        _nothing,
        lambda s, md, e: s.GetAsset(pb.GetAssetRequest(asset_id=e.value_id), metadata=md),
    ),
    "BatchGetAssets": (
        _nothing,
        lambda s, md, e: s.BatchGetAssets(
            pb.BatchGetAssetsRequest(asset_ids=[e.value_id]), metadata=md
        ),
    ),
    "ListAssets": (
        _nothing,
        lambda s, md, e: s.ListAssets(pb.ListAssetsRequest(page_size=5), metadata=md),
    ),
    "WatchAsset": (
        _nothing,
        lambda s, md, e: _drain(
            s.WatchAsset(pb.WatchAssetRequest(asset_ids=[e.value_id]), metadata=md, timeout=10)
        ),
    ),
    "ReadAsset": (
        _nothing,
        lambda s, md, e: _drain(s.ReadAsset(pb.ReadAssetRequest(asset_id=e.value_id), metadata=md)),
    ),
    "GetManifest": (
        _nothing,
        lambda s, md, e: s.GetManifest(
            pb.GetManifestRequest(asset_mappings={"note": e.value_id}), metadata=md
        ),
    ),
    "UploadAsset": (lambda e: _pending(e, pb.ASSET_TYPE_FILE), _upload),
    "QueryUpload": (_nothing, _query_upload),
    "FulfillAsset": (
        _pending,
        lambda s, md, e: s.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=e.target_id, value=pb.Value(text="done")), metadata=md
        ),
    ),
    "FailAsset": (
        _pending,
        lambda s, md, e: s.FailAsset(
            pb.FailAssetRequest(asset_id=e.target_id, reason="no"), metadata=md
        ),
    ),
    "RenewLease": (
        _leased,
        lambda s, md, e: s.RenewLease(pb.RenewLeaseRequest(asset_id=e.target_id), metadata=md),
    ),
    "CreatePendingAsset": (
        _nothing,
        lambda s, md, e: s.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t-new", label="promise"), metadata=md
        ),
    ),
    "GetOrCreatePendingAsset": (
        _nothing,
        lambda s, md, e: s.GetOrCreatePendingAsset(
            pb.GetOrCreatePendingAssetRequest(
                key="roles-key",
                promise=pb.CreatePendingAssetRequest(task_id="t-new", label="promise"),
            ),
            metadata=md,
        ),
    ),
    "CreateValueAsset": (
        _nothing,
        lambda s, md, e: s.CreateValueAsset(
            pb.CreateValueAssetRequest(label="v", value=pb.Value(text="hi")), metadata=md
        ),
    ),
    "RegisterFile": (
        _file,
        lambda s, md, e: s.RegisterFile(pb.RegisterFileRequest(path=e.path), metadata=md),
    ),
    "MintTaskToken": (
        _nothing,
        lambda s, md, e: s.MintTaskToken(
            pb.MintTaskTokenRequest(task_id="t-1", input_asset_ids=[e.value_id]), metadata=md
        ),
    ),
    "DeleteAsset": (
        _value,
        lambda s, md, e: s.DeleteAsset(pb.DeleteAssetRequest(asset_id=e.target_id), metadata=md),
    ),
    "ScrubAssets": (
        _nothing,
        lambda s, md, e: _drain(
            s.ScrubAssets(pb.ScrubAssetsRequest(asset_ids=[e.value_id]), metadata=md)
        ),
    ),
    "SetExpiry": (
        _value,
        lambda s, md, e: s.SetExpiry(
            pb.SetExpiryRequest(asset_id=e.target_id, ttl_seconds=3600), metadata=md
        ),
    ),
    "PlaceHold": (
        _value,
        lambda s, md, e: s.PlaceHold(
            pb.PlaceHoldRequest(asset_id=e.target_id, owner="o", reason="r"), metadata=md
        ),
    ),
    "ReleaseHold": (
        _held,
        lambda s, md, e: s.ReleaseHold(
            pb.ReleaseHoldRequest(asset_id=e.target_id, owner="table"), metadata=md
        ),
    ),
    "GetUsage": (
        _nothing,
        lambda s, md, e: s.GetUsage(pb.GetUsageRequest(group="tag"), metadata=md),
    ),
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
