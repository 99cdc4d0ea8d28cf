"""A fake MongoDB replica set that follows the manual's rules, for tests at the driver boundary.

The store keeps its real AsyncMongoClient, real sessions and pymongo's own transaction
state machine and error labels; its collections and admin commands are served by one
`Server` (documents, transactions, majority) through `FakeCollection`s, with filters,
updates and pipelines interpreted operator by operator (_evaluate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from pymongo.asynchronous.client_session import AsyncClientSession

from tests.unit.mongo_fake._collection import FakeCollection, FakeCursor
from tests.unit.mongo_fake._evaluate import (
    MISSING,
    aggregate,
    apply_update,
    compare,
    evaluate,
    matches,
    project,
)
from tests.unit.mongo_fake._server import Command, Server, lsid_of, write_conflict

__all__ = [
    "MISSING",
    "Command",
    "FakeCollection",
    "FakeCursor",
    "Server",
    "aggregate",
    "apply_update",
    "attach",
    "compare",
    "evaluate",
    "install",
    "lsid_of",
    "matches",
    "project",
    "write_conflict",
]


def install(monkeypatch: pytest.MonkeyPatch, server: Server) -> Server:
    """Route every session's commitTransaction/abortTransaction to `server`."""

    async def finish(self: AsyncClientSession, command_name: str) -> dict[str, Any]:
        return await server.finish(self, command_name)

    monkeypatch.setattr(AsyncClientSession, "_finish_transaction_with_retry", finish)
    return server


def attach(store: Any, server: Server, user: str = "app") -> Any:
    """Serve `store`'s collections and killSessions from `server`, as database user `user`."""
    store._client._fake_user = user  # the user its sessions belong to
    # Each fake keeps the read concern the store gave its real collection.
    for attr, name in (
        ("_assets", "assets"),
        ("_counters", "counters"),
        ("_writers", "writers"),
        ("_tombstones", "tombstones"),
        ("_lease_docs", "leases"),
        ("_sweeps", "sweeps"),
        ("_usage", "usage"),
    ):
        real = getattr(store, attr, None)
        concern = getattr(real, "read_concern", None)
        setattr(store, attr, FakeCollection(server, name, concern))

    async def kill(lsids: list[Mapping[str, Any]]) -> None:
        await server.round_trip(None, "killSessions", "admin")
        server.kill_sessions(lsids, user)

    store._kill_sessions = kill
    return store
