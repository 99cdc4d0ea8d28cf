"""A record write of a group batch, its outcome, and the store statements a batch is made of."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from asset_service.domain.errors import AssetError
from asset_service.store.mongo._documents import Doc


class Kind(enum.IntEnum):
    """What a write does, in the order a batch's statements run (and revisions go)."""

    INSERT = 0
    UPDATE = 1
    DELETE = 2  # a stamping update, then the delete


@dataclass
class Write:
    """One record write of a batch.

    `statement(revision)` is its bulk request (InsertOne / UpdateOne; None when there is
    nothing to send); its filter holds its condition. `outcome(doc, revision)` is the
    caller's result from the record as read back after the batch's writes (None: no
    record; an INSERT gets None and builds its own), or raises the AssetError saying why
    this write did not apply.
    """

    asset_id: str
    kind: Kind
    statement: Callable[[int], Any | None]
    outcome: Callable[[Doc | None, int], Any]
    cost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # for Statements.before


def applied(doc: Doc | None, revision: int) -> bool:
    """Did the write that claimed `revision` change this record? Revisions are unique
    and a batch touches a record once, so the record carries it exactly then."""
    return doc is not None and doc.get("revision") == revision


class Statements(Protocol):
    """The store's statements a batch is made of (MongoStore implements them)."""

    async def claim(self, session: Any, count: int) -> int:
        """The first of `count` fresh revisions: one `$inc` of the counter."""

    async def bulk(self, session: Any, requests: list[Any]) -> None:
        """One ordered bulk write of requests of one kind (one command)."""

    async def read_back(self, session: Any, ids: list[str]) -> dict[str, Doc]:
        """The records of `ids`, as this transaction sees them (one find)."""

    async def before(self, session: Any, writes: list[Write], revisions: list[int]) -> None:
        """Statements on other collections for the whole batch, after the claim and
        before the records' commands: ONE command per collection whatever the batch's
        size (a write's closures may read what this leaves in `Write.extra`)."""

    async def remove_stamped(self, session: Any, gone: list[Doc]) -> None:
        """Delete these stamped records (as read back: `_id`, `revision`), one command."""

    async def after(self, session: Any, done: list[tuple[Write, Doc | None, int]]) -> None:
        """Statements on other collections once the records' are sent, for the whole
        batch (each write, its record as read back or None, its revision): a constant
        number of commands whatever the batch's size."""


# transact(fn, timeout): fn(session) in one transaction within `timeout` seconds, driver
# errors mapped to domain errors (MongoStore._transact).
Transact = Callable[[Callable[[Any], Awaitable[Any]], float], Awaitable[Any]]


@dataclass
class Outcome:
    result: Any = None
    error: AssetError | None = None
