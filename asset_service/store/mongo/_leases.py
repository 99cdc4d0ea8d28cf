"""Writer leases: a process that dies mid-transaction is ended by its peers in seconds.

A transaction that `$inc`-ed the revision counter holds that document until it commits
or aborts. If its process dies first (SIGKILL, a lost node), MongoDB keeps the
transaction open until `transactionLifetimeLimitSeconds` (60 s by default): every other
writer of the deployment conflicts on the counter for that long. So each process
registers the logical session id (lsid) its group writer uses in the `writers`
collection and renews the lease every RENEW_SECONDS by server time ($$NOW); each
renewal also looks for leases older than LEASE_SECONDS and ends their sessions with
`killSessions`, which aborts their open transaction at once. A live process that was
frozen for longer than a lease loses its transaction (an error its callers see as
OutcomeUnknown or UNAVAILABLE and re-read), never a committed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pymongo.errors import PyMongoError

log = logging.getLogger(__name__)

LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.0


class WriterLeases:
    """This process's lease in `writers`, renewed in the background; expired ones reaped.

    `writers` is the collection; `kill_sessions(lsids)` sends `killSessions`.
    """

    def __init__(
        self,
        writers: Any,
        kill_sessions: Callable[[list[Mapping[str, Any]]], Awaitable[Any]],
        instance: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        user: str = "",
    ) -> None:
        self._writers = writers
        # The database user this process authenticated as ("" without access control):
        # killSessions only ends the caller's own user's sessions.
        self.user = user
        self._foreign: set[str] = set()
        self._kill = kill_sessions
        self.instance = instance
        self.lease_ms = int(lease_seconds * 1000)
        self.renew_seconds = renew_seconds
        self._lsid: Mapping[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reaped = 0

    async def register(self, lsid: Mapping[str, Any]) -> None:
        """Lease `lsid` (the writer's session) before any transaction runs on it."""
        self._lsid = lsid
        await self.renew()

    async def renew(self) -> None:
        if self._lsid is None:
            return
        # Server time on both sides of the comparison: client clocks do not matter.
        await self._writers.update_one(
            {"_id": self.instance},
            [{"$set": {"lsid": self._lsid, "seen": "$$NOW", "user": self.user}}],
            upsert=True,
        )

    async def reap(self) -> int:
        """End the sessions of every lease not renewed for LEASE_SECONDS; how many."""
        expired = self._writers.find(
            {
                "_id": {"$ne": self.instance},
                "$expr": {"$lt": ["$seen", {"$subtract": ["$$NOW", self.lease_ms]}]},
            }
        )
        ended = 0
        async for doc in expired:
            owner = str(doc.get("user") or "")
            if owner != self.user:
                # killSessions would match nothing (it pairs each id with the CALLER's
                # user): say so once rather than believe the transaction ended.
                if doc["_id"] not in self._foreign:
                    self._foreign.add(doc["_id"])
                    log.error(
                        "cannot end the MongoDB session of dead writer %s: it ran as "
                        "database user %r, this process as %r, and killSessions only ends "
                        "the caller's own sessions; run every asset-service process as one "
                        "database user (docs/mongodb.md)",
                        doc["_id"],
                        owner,
                        self.user,
                    )
                continue
            lsid = doc.get("lsid")
            if lsid is not None:
                await self._kill([lsid])
            # Only if it was not renewed meanwhile (a frozen process come back).
            await self._writers.delete_one({"_id": doc["_id"], "seen": doc.get("seen")})
            log.warning(
                "ended the MongoDB session of writer %s: its lease expired (a process "
                "that died or froze); its open transaction, if any, is aborted",
                doc["_id"],
            )
            ended += 1
        self.reaped += ended
        return ended

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mongo-writer-lease")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                await self.renew()
                await self.reap()
            except PyMongoError as exc:
                log.warning("could not renew the writer lease or reap expired ones: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(PyMongoError):
            await self._writers.delete_one({"_id": self.instance})
