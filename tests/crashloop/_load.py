"""The mixed load: clients that pick operations, send them, and record every OK answer."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Callable

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.crashloop._model import (
    AVAILABLE,
    CALL_TIMEOUT,
    HAS_SOURCE,
    MOVES,
    PENDING,
    WEIGHTS,
    CrashLoopConfig,
    Known,
    Ledger,
    MiB,
    Op,
    Source,
    content,
    pick_size,
    random_value,
    value_bytes,
)
from tests.crashloop._storage import remove_worker_file, write_worker_file

TARGETS: dict[str, Callable[[Known], bool]] = {
    "upload_fulfill": lambda k: k.status == PENDING and k.type == pb.ASSET_TYPE_FILE,
    "path_fulfill": lambda k: k.status == PENDING and k.type == pb.ASSET_TYPE_FILE,
    "value_fulfill": lambda k: k.status == PENDING and k.type == pb.ASSET_TYPE_VALUE,
    "fail": lambda k: k.status == PENDING,
    "delete": lambda k: True,
}


class Load:
    """Sends operations and books their answers; once `killed` is set, failures are in doubt."""

    def __init__(self, ledger: Ledger, cfg: CrashLoopConfig) -> None:
        self.ledger = ledger
        self.cfg = cfg
        self.killed = asyncio.Event()
        # Set while a path fulfil or move of the load is unanswered: what a kill aims at.
        self.moving = asyncio.Event()
        self._moves = 0

    async def client(self, stub: pb_grpc.AssetServiceStub, rng: random.Random) -> None:
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        while not self.killed.is_set():
            op = await self.plan(rng, rng.choices(kinds, weights)[0])
            if self.killed.is_set():
                # Planned but never sent; the worker removes the file it wrote for it.
                if op.source is not None:
                    remove_worker_file(op.source.path, self.cfg.durable_worker_files)
                return
            await self.execute(stub, op)

    def create_pending(self, rng: random.Random, type_: int | None = None) -> Op:
        seq = self.ledger.next()
        if type_ is None:
            type_ = rng.choice((pb.ASSET_TYPE_FILE, pb.ASSET_TYPE_FILE, pb.ASSET_TYPE_VALUE))
        return Op(
            seq,
            "create_pending",
            label=f"promise-{seq}.out",
            task=f"task-{seq % 7}",
            pending_type=type_,
        )

    async def plan(self, rng: random.Random, kind: str) -> Op:
        """An op of `kind` with its content ready (a worker's file written), or a promise."""
        seq = self.ledger.next()
        op = Op(seq, kind)
        if kind in TARGETS:
            op.target = self.ledger.claim(rng, TARGETS[kind])
            if not op.target:
                return self.create_pending(rng)
        if kind in ("upload", "upload_fulfill"):
            size = pick_size(rng, 0, self.cfg.max_upload_bytes)
            op.data = await asyncio.to_thread(content, rng.getrandbits(64), size)
            op.sha256 = hashlib.sha256(op.data).hexdigest()
            op.with_sha = rng.random() < 0.5
            op.label = f"upload-{seq}.bin" if kind == "upload" else ""
        elif kind in HAS_SOURCE:
            # At least 32 bytes: every worker file is unique, so its sha256 names it.
            size = pick_size(rng, 32, self.cfg.max_source_bytes)
            tag = f"op {seq} {kind}\n".encode()
            data = await asyncio.to_thread(content, rng.getrandbits(64), size, tag)
            path = self.cfg.import_root / f"src-{seq}.bin"
            durable = self.cfg.durable_worker_files
            await asyncio.to_thread(write_worker_file, path, data, durable)
            op.source = Source(path, hashlib.sha256(data).hexdigest(), size)
            op.sha256 = op.source.sha256
            op.with_sha = rng.random() < 0.5
            op.label = "" if kind == "path_fulfill" else f"registered-{seq}.bin"
        elif kind in ("create_value", "value_fulfill"):
            op.value = random_value(rng, seq)
            op.sha256 = hashlib.sha256(value_bytes(op.value)).hexdigest()
            op.label = f"value-{seq}" if kind == "create_value" else ""
        elif kind == "fail":
            op.reason = f"worker of op {seq} gave up (exit {rng.randint(1, 255)})"
        elif kind == "create_pending":
            return self.create_pending(rng)
        elif kind == "reuse_upload":
            reuses = self.ledger.claim(
                rng, lambda k: k.status == AVAILABLE and k.type == pb.ASSET_TYPE_FILE
            )
            if not reuses:
                return self.create_pending(rng)
            source = self.ledger.known[reuses]
            op.reuses, op.reuse_size, op.sha256 = reuses, source.size, source.sha256
            op.label = f"reused-{seq}.bin"
        return op

    async def execute(self, stub: pb_grpc.AssetServiceStub, op: Op) -> None:
        ledger = self.ledger
        ledger.ops.append(op)
        move = op.kind in MOVES and not op.chore
        if move:
            self._moves += 1
            self.moving.set()
        try:
            asset = await call(stub, op)
        except grpc.aio.AioRpcError as err:
            op.error = f"{err.code().name}: {err.details()}"
            if self.killed.is_set():
                ledger.tally(op, "in doubt")
            else:
                ledger.problems.append(f"{op} failed with no crash around: {op.error}")
            return
        finally:
            if move:
                self._moves -= 1
                if not self._moves:
                    self.moving.clear()
        op.acked = asset
        ledger.tally(op, "retried" if op.retry_of else "housekeeping" if op.chore else "acked")
        wrong = op.wrong_answer(asset)
        if wrong:
            ledger.problems.append(f"{op} was acknowledged with a wrong record: {wrong}")
        if op.kind == "delete":
            ledger.known.pop(op.target, None)
            ledger.deleted[op.target] = op
        else:
            ledger.known[asset.id] = Known.of(asset)


async def call(stub: pb_grpc.AssetServiceStub, op: Op) -> pb.Asset:
    """Send `op`; return the record its OK answer carries."""
    t = CALL_TIMEOUT
    if op.kind in ("upload", "upload_fulfill"):
        header = pb.UploadHeader(label=op.label, tags=["crash-loop"], pending_asset_id=op.target)
        if op.with_sha:
            header.expected_sha256 = op.sha256
            header.expected_size_bytes = len(op.data)

        async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
            yield pb.UploadAssetRequest(header=header)
            for start in range(0, len(op.data), MiB):
                yield pb.UploadAssetRequest(chunk=op.data[start : start + MiB])

        return (await stub.UploadAsset(requests(), timeout=t)).asset
    if op.kind == "reuse_upload":
        header = pb.UploadHeader(
            label=op.label,
            tags=["crash-loop"],
            expected_size_bytes=op.reuse_size,
            expected_sha256=op.sha256,
            reuse_stored_bytes=True,
        )
        return (
            await stub.UploadAsset(iter([pb.UploadAssetRequest(header=header)]), timeout=t)
        ).asset
    if op.kind == "path_fulfill":
        assert op.source is not None
        req = pb.FulfillAssetRequest(
            asset_id=op.target,
            source_path=str(op.source.path),
            expected_sha256=op.sha256 if op.with_sha else "",
        )
        return (await stub.FulfillAsset(req, timeout=t)).asset
    if op.kind in ("register_move", "register_copy"):
        assert op.source is not None
        reg = pb.RegisterFileRequest(
            path=str(op.source.path),
            label=op.label,
            tags=["crash-loop"],
            move=op.kind == "register_move",
        )
        return (await stub.RegisterFile(reg, timeout=t)).asset
    if op.kind == "create_value":
        cv = pb.CreateValueAssetRequest(label=op.label, value=op.value, tags=["crash-loop"])
        return (await stub.CreateValueAsset(cv, timeout=t)).asset
    if op.kind == "value_fulfill":
        fv = pb.FulfillAssetRequest(asset_id=op.target, value=op.value)
        return (await stub.FulfillAsset(fv, timeout=t)).asset
    if op.kind == "fail":
        fa = pb.FailAssetRequest(asset_id=op.target, reason=op.reason)
        return (await stub.FailAsset(fa, timeout=t)).asset
    if op.kind == "delete":
        da = pb.DeleteAssetRequest(asset_id=op.target)
        return (await stub.DeleteAsset(da, timeout=t)).asset
    assert op.kind == "create_pending", op.kind
    cp = pb.CreatePendingAssetRequest(
        task_id=op.task,
        label=op.label,
        type=op.pending_type,  # type: ignore[arg-type]
        tags=["crash-loop"],
    )
    return (await stub.CreatePendingAsset(cp, timeout=t)).asset
