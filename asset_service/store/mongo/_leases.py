"""Writer leases: a process that dies mid-transaction is ended by its peers in seconds.

A transaction that `$inc`-ed the revision counter holds that document until it commits
or aborts. If its process dies first (SIGKILL, a lost node), MongoDB keeps the
transaction open until `transactionLifetimeLimitSeconds` (60 s by default): every other
writer of the deployment conflicts on the counter for that long. So each process
registers the logical session id (lsid) its group writer uses in the `writers`
collection and beats on it every RENEW_SECONDS (a counter `beat`, and `seen` = $$NOW for
people); each peer ends with `killSessions` the session of a lease whose beat it has not
seen change for LEASE_SECONDS, which aborts its open transaction at once.

Liveness does not rest on anything a live process cannot control (issue 21, item 6):
- clocks: a peer judges a lease by how long IT has watched the beat stand still, on its
  own monotonic clock (as Kubernetes' node lifecycle controller judges node leases), not
  by comparing `seen` with $$NOW: a failover to a node whose clock is ahead kills nobody;
- majority lag: beats are acknowledged by the primary alone (w:1): peers read the lease
  on the primary, and a beat lost in a rollback is only a change the peers see late;
- event-loop stalls: beats come from a thread of their own (with a synchronous client),
  so a loop blocked for seconds is not taken for a dead process; a loop stalled for over
  STALL_LIMIT_SECONDS stops the beats (then peers end its transaction, as for a death);
- the reaper (with its killSessions) runs beside the beats, never in series with them.
A live process whose beats really stop for a lease (a frozen VM, a partition from the
primary) loses its in-flight transaction (an error its callers see as OutcomeUnknown or
UNAVAILABLE and re-read), never a committed write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pymongo
from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

from asset_service.store._tasks import cancel_all

log = logging.getLogger(__name__)

LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.0
# Beats go on while the event loop is stalled up to this long (past it the process is
# taken for hung: peers end its transaction, which may hold the counter).
STALL_LIMIT_SECONDS = 20.0
# A beat is acknowledged by the primary: peers read it there (see the module docstring).
BEAT_CONCERN = WriteConcern(w=1)


class WriterLeases:
    """This process's lease in `writers`, beaten in the background; expired ones reaped.

    `writers` is the (async) collection; `beats`, if given, the same collection through a
    synchronous client, for the heartbeat thread (without it the beats run on the loop);
    `kill_sessions(lsids)` sends `killSessions`.
    """

    def __init__(
        self,
        writers: Any,
        kill_sessions: Callable[[list[Mapping[str, Any]]], Awaitable[Any]],
        instance: str,
        *,
        lease_seconds: float = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        beats: Any = None,
        stall_limit: float = STALL_LIMIT_SECONDS,
        user: str = "",
    ) -> None:
        # The database user this process authenticated as ("" without access control):
        # killSessions only ends the caller's own user's sessions.
        self.user = user
        self._foreign: set[Any] = set()
        self._writers = writers.with_options(write_concern=BEAT_CONCERN)
        self._beats = beats.with_options(write_concern=BEAT_CONCERN) if beats is not None else None
        self._kill = kill_sessions
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.stall_limit = stall_limit
        self._lsid: Mapping[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_tick = time.monotonic()
        # Each peer's last beat seen, and since when (this process's monotonic clock).
        self._watched: dict[Any, tuple[Any, float]] = {}
        self.reaped = 0
        self.beats = 0

    def _beat(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        lsid = self._lsid
        return {"_id": self.instance}, [
            {
                "$set": {
                    "lsid": lsid,
                    "seen": "$$NOW",
                    "beat": {"$add": [{"$ifNull": ["$beat", 0]}, 1]},
                    "user": self.user,
                }
            }
        ]

    async def register(self, lsid: Mapping[str, Any]) -> None:
        """Lease `lsid` (the writer's session) before any transaction runs on it."""
        self._lsid = lsid
        await self.renew()

    async def renew(self) -> None:
        if self._lsid is None:
            return
        where, update = self._beat()
        await self._writers.update_one(where, update, upsert=True)
        self.beats += 1

    def _beat_from_thread(self) -> None:
        assert self._beats is not None
        while not self._stop.wait(self.renew_seconds):
            stalled = time.monotonic() - self._loop_tick
            if self._lsid is None:
                continue
            if stalled > self.stall_limit:
                log.warning(
                    "the event loop has not run for %.0fs: writer lease beats stop, so peers "
                    "may end this process's open transaction",
                    stalled,
                )
                continue
            where, update = self._beat()
            try:
                with pymongo.timeout(max(self.renew_seconds, 1.0) * 2):
                    self._beats.update_one(where, update, upsert=True)
                self.beats += 1
            except PyMongoError as exc:
                log.warning("could not renew the writer lease: %s", exc)

    async def reap(self) -> int:
        """End the session of every peer whose beat stood still for LEASE_SECONDS."""
        now = time.monotonic()
        ended = 0
        present = set()
        async for doc in self._writers.find({"_id": {"$ne": self.instance}}):
            key = doc["_id"]
            present.add(key)
            beat = (doc.get("beat"), doc.get("seen"))
            watched = self._watched.get(key)
            if watched is None or watched[0] != beat:
                self._watched[key] = (beat, now)
                continue
            if now - watched[1] < self.lease_seconds:
                continue
            owner = str(doc.get("user") or "")
            if owner != self.user:
                # killSessions would match nothing (it pairs each id with the CALLER's
                # user): say so once rather than believe the transaction ended.
                if key not in self._foreign:
                    self._foreign.add(key)
                    log.error(
                        "cannot end the MongoDB session of dead writer %s: it ran as "
                        "database user %r, this process as %r, and killSessions only ends "
                        "the caller's own sessions; run every asset-service process as one "
                        "database user (docs/mongodb.md)",
                        key,
                        owner,
                        self.user,
                    )
                continue
            lsid = doc.get("lsid")
            if lsid is not None:
                await self._kill([lsid])
            # Only if it did not beat meanwhile (a frozen process come back).
            await self._writers.delete_one({"_id": key, "beat": beat[0], "seen": beat[1]})
            self._watched.pop(key, None)
            log.warning(
                "ended the MongoDB session of writer %s: its lease stood still for %.0fs "
                "(a process that died or froze); its open transaction, if any, is aborted",
                key,
                now - watched[1],
            )
            ended += 1
        for gone in set(self._watched) - present:
            del self._watched[gone]
        self.reaped += ended
        return ended

    def start(self) -> None:
        reaping = self._every_renewal(self.reap, "look for expired writer leases")
        self._tasks.append(asyncio.create_task(reaping, name="mongo-writer-reaper"))
        if self._beats is not None:
            self._tasks.append(asyncio.create_task(self._ticking(), name="mongo-loop-tick"))
            self._thread = threading.Thread(
                target=self._beat_from_thread, name="mongo-writer-lease", daemon=True
            )
            self._thread.start()
        else:
            beating = self._every_renewal(self.renew, "renew the writer lease")
            self._tasks.append(asyncio.create_task(beating, name="mongo-writer-lease"))

    async def _ticking(self) -> None:
        """Tell the heartbeat thread the loop still runs."""
        while True:
            self._loop_tick = time.monotonic()
            await asyncio.sleep(self.renew_seconds / 2)

    async def _every_renewal(self, step: Callable[[], Awaitable[object]], what: str) -> None:
        """Run `step` every renew_seconds; a failure is logged and the next round retries."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                await step()
            except PyMongoError as exc:
                log.warning("could not %s: %s", what, exc)

    async def close(self) -> None:
        self._stop.set()
        await cancel_all(self._tasks)
        self._tasks = []
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.renew_seconds * 3 + 5)
            self._thread = None
        with contextlib.suppress(PyMongoError):
            await self._writers.delete_one({"_id": self.instance})
