"""The one table that says which role each RPC needs, and what a task-scoped token may do."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from asset_service.security.principal import Role


class TaskAccess(enum.Enum):
    """How a task-scoped token is checked on an RPC (NONE: it may not call it)."""

    NONE = "none"
    # Every asset the request names is an input of the token or an output of its task.
    READ = "read"
    # The one asset the request names is a promise of the token's task.
    WRITE = "write"
    # The request's created_by_task filter is the token's task.
    LIST = "list"
    # The request names something the caller started itself (a resumable upload): the
    # handler looks it up under the caller's principal, so anyone else's is NOT_FOUND.
    OWN = "own"


@dataclass(frozen=True)
class Rule:
    # None: open to every caller, with or without credentials (health probes).
    role: Role | None
    task: TaskAccess = TaskAccess.NONE
    # The request field naming the asset(s) a task token is checked against ("a.b" nests).
    asset_field: str = ""
    # Other fields a task token may set; any field not listed refuses the call, so a field
    # added to the contract later is closed to task tokens until it is listed here.
    task_fields: tuple[str, ...] = ()
    # Of those, the fields naming a server-side file: a task token's must lie in its task's
    # own folder of an import root, <import root>/<task id>/ (no other task's files).
    task_paths: tuple[str, ...] = ()
    # Mutating calls get an audit line.
    audited: bool = False


_S = "/asset.v1.AssetService/"
_HEADER = (
    "label",
    "media_type",
    "tags",
    "expected_size_bytes",
    "expected_sha256",
    # A resumable upload's id is looked up under the caller's principal (domain/uploads.py):
    # a task token resumes only the uploads its task started.
    "upload_id",
    "write_offset",
    "ttl_seconds",
    # Not reuse_stored_bytes: with it a task could copy into its own output (and read)
    # any stored bytes whose sha256 it knows, not only its inputs.
)
_LIST = ("status", "type", "tags", "created_by_task", "label", "key", "page_size", "page_token")
# Server reflection, both protocols (api/reflection.py serves one servicer under each name).
REFLECTION_METHODS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
HEALTH_SERVICE = "grpc.health.v1.Health"

RULES: dict[str, Rule] = {
    _S + "GetAsset": Rule(Role.READER, TaskAccess.READ, "asset_id"),
    _S + "BatchGetAssets": Rule(Role.READER, TaskAccess.READ, "asset_ids"),
    _S + "ListAssets": Rule(Role.READER, TaskAccess.LIST, "", _LIST),
    _S + "WatchAsset": Rule(
        Role.READER, TaskAccess.READ, "asset_ids", ("after_revision", "follow")
    ),
    _S + "ReadAsset": Rule(Role.READER, TaskAccess.READ, "asset_id", ("offset", "limit")),
    _S + "GetManifest": Rule(
        Role.READER, TaskAccess.READ, "asset_mappings", ("config_params", "wait")
    ),
    _S + "UploadAsset": Rule(
        Role.WORKER, TaskAccess.WRITE, "header.pending_asset_id", _HEADER, audited=True
    ),
    _S + "QueryUpload": Rule(Role.WORKER, TaskAccess.OWN, "upload_id"),
    _S + "FulfillAsset": Rule(
        Role.WORKER,
        TaskAccess.WRITE,
        "asset_id",
        ("source_path", "value", "expected_sha256"),
        task_paths=("source_path",),
        audited=True,
    ),
    _S + "FailAsset": Rule(Role.WORKER, TaskAccess.WRITE, "asset_id", ("reason",), audited=True),
    # A heartbeat every few seconds per task: kept on the record (updated_by), not audited.
    _S + "RenewLease": Rule(Role.WORKER, TaskAccess.WRITE, "asset_id", ("lease_seconds",)),
    _S + "CreatePendingAsset": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "GetOrCreatePendingAsset": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "CreateValueAsset": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "RegisterFile": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "MintTaskToken": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "DeleteAsset": Rule(Role.ADMIN, audited=True),
    # Retention (issue 23): what decides how long an asset lives.
    _S + "SetExpiry": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "PlaceHold": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "ReleaseHold": Rule(Role.ORCHESTRATOR, audited=True),
    _S + "GetUsage": Rule(Role.READER),
    # Reads stored bytes at the caller's rate and may mark assets corrupt.
    _S + "ScrubAssets": Rule(Role.ADMIN, audited=True),
    # With --reflection open the interceptor lets them through without credentials.
    **{method: Rule(Role.READER) for method in REFLECTION_METHODS},
    HEALTH_SERVICE: Rule(None),
}


def rule_for(method: str) -> Rule | None:
    """The rule of a full method name ("/pkg.Service/Method"), or of its whole service."""
    rule = RULES.get(method)
    if rule is None:
        rule = RULES.get(method.split("/")[1] if method.count("/") == 2 else "")
    return rule


def rpc_name(method: str) -> str:
    return method.rsplit("/", 1)[-1]
