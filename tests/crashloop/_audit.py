"""After a restart: settle what was in flight, check every invariant, let the worker retry."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.crashloop._load import Load
from tests.crashloop._model import AVAILABLE, MOVES, STATUS, Known, Op, show_asset
from tests.crashloop._storage import (
    list_all,
    read_back,
    remove_worker_file,
    storage_violations,
)


class Audit:
    """One audit of the restarted server; problems go to the ledger, named precisely."""

    def __init__(
        self,
        load: Load,
        root: Path,
        pid: int | set[int],
        storage_check: Callable[[list[pb.Asset]], Awaitable[list[str]]] | None = None,
        orphans: bool = True,
    ) -> None:
        self.load = load
        self.ledger = load.ledger
        self.root = root
        self.pid = pid
        self.storage_check = storage_check
        # False while another worker may be committing: start-up then keeps young
        # unreferenced files (--orphan-grace), which are not leaks.
        self.orphans = orphans
        self.bad = self.ledger.problems.append

    async def run(self, stub: pb_grpc.AssetServiceStub) -> None:
        ledger = self.ledger
        # Storage first, before any request of ours can create or remove a file.
        records = await list_all(stub)
        if self.storage_check is None:
            problems = storage_violations(self.root, records, self.pid, self.orphans)
        else:
            problems = await self.storage_check(records)
        for problem in problems:
            self.bad(problem)
        by_id = {a.id: a for a in records}
        by_label: dict[str, list[pb.Asset]] = defaultdict(list)
        for a in records:
            by_label[a.label].append(a)
        unsettled = [op for op in ledger.ops if op.acked is None]
        doubtful = {op.target for op in unsettled if op.target}

        for asset_id, known in ledger.known.items():
            if asset_id in doubtful:
                continue  # an unanswered op may have moved it on: settled below
            now = by_id.get(asset_id)
            if now is None:
                self.bad(f"acknowledged asset {asset_id} ({known.label}) is gone")
                continue
            for change in known.diff(now):
                self.bad(f"acknowledged asset {asset_id} changed: {change}")
        for asset_id, op in ledger.deleted.items():
            if asset_id in by_id:
                self.bad(f"{op} was acknowledged, but asset {asset_id} is still listed")

        retries: list[Op] = []
        adopted: set[str] = set()
        for op in unsettled:
            retry = self._settle(op, by_id, by_label, adopted)
            if retry is not None:
                retries.append(retry)
        for op in ledger.ops:
            if op.acked is not None and op.source is not None:
                self._check_acked_source(op)
        for a in records:
            if a.id not in ledger.known and a.id not in adopted:
                self.bad(
                    f"asset {a.id} ({a.label}, {STATUS(a.status)}) was never acknowledged "
                    "and matches no operation in flight"
                )

        # The worker, restarted too, retries what it still has the file for.
        self.load.killed.clear()
        for retry in retries:
            await self.load.execute(stub, retry)
            if retry.acked is not None:
                self._check_acked_source(retry)

        final = await list_all(stub)
        for asset_id in sorted(set(ledger.known) - {a.id for a in final}):
            self.bad(f"asset {asset_id} vanished during the audit")
        for a in final:
            if a.status == AVAILABLE:
                wrong = await read_back(stub, a)
                if wrong:
                    self.bad(f"AVAILABLE {show_asset(a)} without its bytes: {wrong}")
        # The worker cleans up its copies; nothing else may be left in its folder.
        durable = self.load.cfg.durable_worker_files
        for op in ledger.ops:
            if op.source is not None:
                remove_worker_file(op.source.path, durable)
        for stray in sorted(self.load.cfg.import_root.rglob("*")):
            if stray.is_file():
                self.bad(f"unexpected file in the import root: {stray}")
                remove_worker_file(stray, durable)

    def _check_acked_source(self, op: Op) -> None:
        if op.source is None:
            return
        state = op.source.state()
        if op.kind in MOVES and state != "missing":
            self.bad(
                f"{op} was acknowledged, yet its source is still at its path ({state}): "
                "the record and the source both exist"
            )
        if op.kind == "register_copy" and state != "intact":
            self.bad(f"{op}: a copy (move=false) must leave the source; it is {state}")

    def _settle(
        self,
        op: Op,
        by_id: dict[str, pb.Asset],
        by_label: dict[str, list[pb.Asset]],
        adopted: set[str],
    ) -> Op | None:
        """Decide what an unanswered op did; report an inconsistent outcome; maybe retry."""
        ledger = self.ledger
        if op.target:
            rec = by_id.get(op.target)
            if rec is None and op.kind != "delete":
                self.bad(f"{op} was in flight and its target asset {op.target} is gone")
                return None
        else:
            matches = by_label.get(op.label, [])
            if len(matches) > 1:
                self.bad(f"{op} was in flight and {len(matches)} assets carry its label")
                return None
            rec = matches[0] if matches else None

        if op.kind == "delete":
            before = ledger.known.get(op.target)
            if rec is None:
                ledger.known.pop(op.target, None)
                ledger.tally(op, "applied")
            else:
                ledger.tally(op, "not applied")
                for change in before.diff(rec) if before else []:
                    self.bad(f"{op} was in flight and left asset {op.target} changed: {change}")
            return None
        if rec is not None and not op.applied_in(rec):
            untouched = ledger.known.get(op.target) if op.target else None
            if untouched is None or untouched.diff(rec):
                what = "left" if op.target else "created"
                self.bad(
                    f"{op} was in flight and {what} {show_asset(rec)}: neither before nor after"
                )
                return None
            rec = None  # its target is as it was: the op never happened

        state = op.source.state() if op.source is not None else ""
        if op.kind in MOVES and op.source is not None:
            if rec is not None and state != "missing":
                self.bad(
                    f"{op} was in flight: its record committed ({show_asset(rec)}) but the "
                    f"source is still at its path ({state}); a move must not leave both"
                )
            elif rec is None and state != "intact":
                holders = [a.id for a in by_id.values() if a.sha256 == op.source.sha256]
                still = f"asset {op.target} is still PENDING; " if op.target else ""
                self.bad(
                    f"{op} was in flight: the worker's file is LOST: {still}the source is "
                    f"{state} and no record holds its sha256 {op.source.sha256} "
                    f"(other records with that sha256: {holders or 'none'})"
                )
        elif op.kind == "register_copy" and state != "intact":
            self.bad(f"{op} was in flight and its source (move=false) is now {state}")

        ledger.tally(op, "applied" if rec is not None else "not applied")
        if rec is not None:
            ledger.known[rec.id] = Known.of(rec)
            adopted.add(rec.id)
            return None
        if op.kind in MOVES and state == "intact":
            return Op(
                ledger.next(),
                op.kind,
                label=op.label,
                target=op.target,
                source=op.source,
                sha256=op.sha256,
                with_sha=op.with_sha,
                retry_of=op.seq,
            )
        return None
