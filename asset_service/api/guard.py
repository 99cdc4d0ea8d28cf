"""Admission of one call: the RPC->role table, task scopes, and what the audit line names."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from asset_service.api.wire import Malformed
from asset_service.domain.errors import AssetError, InvalidArgument, PermissionDenied
from asset_service.domain.models import parse_asset_id, validate_server_path, validate_task_id
from asset_service.security.authn import Authenticator
from asset_service.security.principal import Principal, TaskScope
from asset_service.security.roles import Rule, TaskAccess, rpc_name

Ctx = grpc.aio.ServicerContext[Any, Any]
_CODES = {c.value[0]: c for c in grpc.StatusCode}


class AssetLookup(Protocol):
    async def promised_by(self, asset_ids: Sequence[str]) -> dict[str, str]:
        """{asset id: the task that promised it} for the ids that name an asset."""


def _denied(principal: Principal, rpc: str, rule: Rule | None) -> str | None:
    """Why `principal` may not call `rpc` at all, or None (task scopes are checked later)."""
    if rule is None:
        return f"{rpc} has no access rule on this server; no one may call it"
    if principal.task is not None:
        if rule.task is TaskAccess.NONE:
            return (
                f"this token is scoped to task {principal.task.task_id}; it cannot call {rpc} "
                "(a task token may read its inputs and outputs and fulfill or fail its "
                "task's promises)"
            )
        return None
    assert rule.role is not None
    if principal.has(rule.role):
        return None
    return (
        f"{principal.name} (roles: {principal.roles_text}) may not call {rpc}: it needs the "
        f"{rule.role.label} role"
    )


def _field_values(message: Message, path: str) -> list[str]:
    value: Any = message
    for part in path.split("."):
        value = getattr(value, part)
    if isinstance(value, str):
        return [value]
    if hasattr(value, "values") and callable(value.values):
        return [str(v) for v in value.values()]  # a map: its values are the asset ids
    return [str(v) for v in value]


class Guard:
    """Admission of one method: authenticate, authorize, scope-check, audit."""

    def __init__(
        self,
        method: str,
        rule: Rule | None,
        authenticator: Authenticator,
        assets: AssetLookup,
        first_message_timeout: float,
        import_roots: Sequence[Path] = (),
    ) -> None:
        self.method = method
        self.rpc = rpc_name(method)
        self.rule = rule
        self.authenticator = authenticator
        self.assets = assets
        self.first_message_timeout = first_message_timeout
        self.import_roots = tuple(import_roots)

    def admit(self, context: Ctx) -> Principal:
        principal = self.authenticator.authenticate(
            context.invocation_metadata() or (), context.auth_context()
        )
        reason = _denied(principal, self.rpc, self.rule)
        if reason is not None:
            raise Refused(principal, PermissionDenied(reason))
        return principal

    async def check_scope(self, principal: Principal, request: Message | None) -> None:
        """For a task token: the request touches only what the token's task may touch.

        The decision rests on created_by_task, which is set when a promise is created and
        never changes afterwards, so checking it before the handler runs cannot race with
        a concurrent change. State (PENDING or not) is left to the state machine's own
        conditional write, so an identical retry of the task's fulfill stays idempotent.
        """
        scope, rule = principal.task, self.rule
        if scope is None or rule is None or isinstance(request, Malformed):
            return  # (the handler refuses a request that did not parse)
        try:
            await self._check_scope(scope, rule, request)
        except AssetError as exc:  # PermissionDenied, or the store could not answer
            raise Refused(principal, exc) from None

    async def _check_scope(self, scope: TaskScope, rule: Rule, request: Message | None) -> None:
        task = scope.task_id
        field = rule.asset_field
        message = request
        if rule.asset_field.startswith("header."):  # UploadAsset: the header, sent first
            if request is None or request.WhichOneof("payload") != "header":
                raise PermissionDenied(
                    f"this token is scoped to task {task}; an upload must start with a header "
                    "naming one of the task's promises in pending_asset_id"
                )
            message, field = request.header, field.removeprefix("header.")  # type: ignore[attr-defined]
        assert message is not None
        allowed = {field, *rule.task_fields}
        extra = sorted(f.name for f, _ in message.ListFields() if f.name not in allowed)
        if extra:
            raise PermissionDenied(
                f"this token is scoped to task {task}; it may not set {', '.join(extra)} "
                f"in {self.rpc}"
            )
        if rule.task is TaskAccess.OWN:
            return  # the handler finds only what this principal started
        if rule.task is TaskAccess.LIST:
            if getattr(message, "created_by_task") != task:  # noqa: B009
                raise PermissionDenied(
                    f"this token is scoped to task {task}; ListAssets needs the filter "
                    f"created_by_task={task}"
                )
            return
        ids = _field_values(message, field)
        if rule.task is TaskAccess.WRITE:
            if not ids[0]:
                raise PermissionDenied(
                    f"this token is scoped to task {task}; name one of its promises "
                    f"({field}) to {self.rpc}"
                )
            if (await self.assets.promised_by(ids[:1])).get(_normal(ids[0])) != task:
                raise PermissionDenied(
                    f"this token is scoped to task {task}; it may fulfill or fail only that "
                    f"task's promises, and asset {_short(ids[0])} is not one of them"
                )
            for name in rule.task_paths:
                if raw := getattr(message, name):
                    self._check_task_path(task, name, raw)
            return
        outside = [i for i in dict.fromkeys(ids) if _normal(i) not in scope.inputs]
        # One read for all of them; missing and foreign look alike, so nothing about other
        # tasks' data leaks.
        promised = await self.assets.promised_by(outside) if outside else {}
        for asset_id in outside:
            if promised.get(_normal(asset_id)) != task:
                raise PermissionDenied(
                    f"this token is scoped to task {task}; asset {_short(asset_id)} is "
                    "neither an input nor an output of it"
                )

    def _check_task_path(self, task: str, name: str, raw: str) -> None:
        """A task token's server-side file lies in <import root>/<task id>/: the files of
        other tasks waiting under the same root are out of its reach.

        Lexical, on a path already checked to have no '.' or '..' components: the file is
        then opened beneath its root without following any symbolic link (storage/fs.py),
        so it is where the path says.
        """
        try:
            validate_task_id(task)
        except InvalidArgument:
            raise PermissionDenied(
                f"this token's task {_short(task)} is not a safe folder name, so it cannot "
                f"use {name}; upload the output with UploadAsset instead"
            ) from None
        validate_server_path(raw, name)
        folders = [PurePosixPath(root, task) for root in self.import_roots]
        path = PurePosixPath(raw)
        if any(path.is_relative_to(folder) and path != folder for folder in folders):
            return
        allowed = " or ".join(f"{folder}/" for folder in folders) or "none: no import roots"
        raise PermissionDenied(
            f"this token is scoped to task {task}; its {name} must lie in the task's own "
            f"folder of an import root ({allowed}), and {_short(raw)} does not"
        )

    async def first_message(
        self, principal: Principal, messages: AsyncIterator[Message]
    ) -> Message | None:
        try:
            async with asyncio.timeout(self.first_message_timeout):
                return await anext(messages, None)
        except TimeoutError:
            raise Refused(
                principal,
                InvalidArgument(f"{self.rpc} sent no first message within the time allowed"),
            ) from None
        except DecodeError as exc:
            raise Refused(
                principal,
                InvalidArgument(f"a message of the {self.rpc} stream does not parse: {exc}"),
            ) from None


class Refused(Exception):
    def __init__(self, principal: Principal | None, error: AssetError) -> None:
        super().__init__(error.message)
        self.principal = principal
        self.error = error


def _normal(asset_id: str) -> str:
    try:
        return parse_asset_id(asset_id)
    except InvalidArgument:
        return asset_id


def _short(value: str) -> str:
    return value if len(value) <= 64 and value.isprintable() else repr(value[:64]) + "…"


def audit_subjects(request: Any, response: Any) -> list[str]:
    """The asset ids (or task) an audited call was about, for its audit line."""
    found: list[str] = []
    for message in (request, getattr(request, "header", None), response):
        if message is None:
            continue
        for name in ("asset_id", "pending_asset_id"):
            if isinstance(value := getattr(message, name, None), str):
                found.append(value)
        asset = getattr(message, "asset", None)
        if asset is not None and asset.id:
            found.append(asset.id)
    task = getattr(request, "task_id", "")
    if isinstance(task, str) and task and hasattr(request, "input_asset_ids"):  # MintTaskToken
        found.append(f"task={task}")
    return found


def audit_code(context: Ctx, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None:
        return grpc.StatusCode.OK
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    raw: Any = context.code()
    if isinstance(raw, grpc.StatusCode):
        return raw
    if isinstance(raw, int):
        return _CODES.get(raw, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN
