"""Start-up: client options, checks of the server, who we are, how late a write can commit."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pymongo.errors import PyMongoError

from asset_service.domain.errors import InvalidArgument, Unavailable

log = logging.getLogger(__name__)

# Fail fast: an RPC against an unreachable server answers UNAVAILABLE within seconds.
# Any of these given in the URL's query string wins over the default.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "serverSelectionTimeoutMS": 2500,
    "connectTimeoutMS": 2500,
    "socketTimeoutMS": 20000,
}
# MongoDB's default transactionLifetimeLimitSeconds, used when the server will not say.
DEFAULT_TRANSACTION_LIFETIME = 60.0
# Change-stream post-images (each event's state as of the change, issue 21 item 1) came
# with MongoDB 6.0; snapshot reads outside transactions (watch snapshots) with 5.0.
MIN_WIRE_VERSION = 17


async def database_user(client: Any) -> str:
    """The user this client authenticated as ("user@db"; "" without access control):
    killSessions only ends sessions of the caller's own user (_leases.py)."""
    try:
        status = await client.admin.command("connectionStatus")
    except PyMongoError as exc:
        log.info("could not read connectionStatus (%s); leases carry no user", exc)
        return ""
    users = status.get("authInfo", {}).get("authenticatedUsers", [])
    return ",".join(sorted(f"{u.get('user')}@{u.get('db')}" for u in users))


async def transaction_lifetime(client: Any) -> float:
    """transactionLifetimeLimitSeconds: the server aborts any transaction older than
    this (getParameter needs a role such as clusterMonitor; without it, the default)."""
    try:
        reply = await client.admin.command("getParameter", 1, transactionLifetimeLimitSeconds=1)
        return float(reply["transactionLifetimeLimitSeconds"])
    except (PyMongoError, KeyError, TypeError, ValueError) as exc:
        log.info(
            "could not read transactionLifetimeLimitSeconds (%s); assuming MongoDB's default "
            "%gs for the orphan-grace check",
            exc,
            DEFAULT_TRANSACTION_LIFETIME,
        )
        return DEFAULT_TRANSACTION_LIFETIME


def commit_horizon(operation_timeout: float, lifetime: float) -> float:
    """The longest a record write can still commit after it was submitted.

    Its transaction starts before its deadline (operation_timeout from submission: a
    write still queued then is never sent) and can commit only while it is open; the
    server aborts a transaction older than `lifetime`, by a reaper that runs every
    lifetime/2 seconds, at least once a second and at most a minute apart
    (https://jira.mongodb.org/browse/DOCS-11599). A live process ends its own doubtful
    sessions and peers end a dead one's within a lease (5 s): this bound is for when
    neither can.
    """
    return operation_timeout + lifetime + min(max(lifetime / 2, 1.0), 60.0)


def check_orphan_grace(orphan_grace: float | None, horizon: float) -> None:
    """Refuse an --orphan-grace that a write in flight could outlive: the start-up sweep
    would remove bytes a record then committed to point at."""
    if orphan_grace is not None and orphan_grace <= horizon:
        raise InvalidArgument(
            f"--orphan-grace {orphan_grace:g}s is too short for MongoDB: a record write can "
            f"still commit up to {horizon:g}s after it was sent (the operation timeout plus "
            "the server's transactionLifetimeLimitSeconds and its reaper's interval), so the "
            "start-up sweep could remove the bytes of a write that then commits; give more "
            f"than {horizon:g}s (the default is 10m)"
        )


def replicated(hello: dict[str, Any], allow_standalone: bool, where: str, help_text: str) -> bool:
    """Whether the server `hello` answered for runs transactions (a replica set or a
    sharded cluster); Unavailable if the service cannot use it."""
    if "setName" not in hello and hello.get("msg") != "isdbgrid":
        if not allow_standalone:
            raise Unavailable(f"MongoDB at {where} is a standalone server: {help_text}")
        log.warning("MongoDB is not a replica set: no transactions, no change feed")
        return False
    if int(hello.get("maxWireVersion", 0)) < MIN_WIRE_VERSION:
        raise Unavailable(
            f"MongoDB at {where} is older than 6.0 (wire version "
            f"{hello.get('maxWireVersion')}); the asset service needs 6.0 or newer: its "
            "watch events are built from the post-images MongoDB keeps at each change "
            "(changeStreamPreAndPostImages), in revision order; snapshot reads serve "
            "watch snapshots"
        )
    return True


def client_options(url: str) -> dict[str, Any]:
    """DEFAULT_CLIENT_OPTIONS but those the URL's query string gives."""
    given = {k.lower() for k, _ in parse_qsl(urlsplit(url).query)}
    return {k: v for k, v in DEFAULT_CLIENT_OPTIONS.items() if k.lower() not in given}
