"""The crash loop's vocabulary: settings, operations, what the client was told, the report."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.wire import MESSAGE_LIMITS

MiB = 1024 * 1024
CALL_TIMEOUT = 60.0
CHANNEL_OPTIONS = list(MESSAGE_LIMITS)
# The only files a live process may keep in its staging folder while no request runs
# (empty folders, such as its intent journal's, are fine).
STAGING_KEEP = frozenset({".lock"})
# How often each operation is picked; path fulfills and moves are what a crash can destroy.
WEIGHTS = {
    "upload": 3,
    "upload_fulfill": 2,
    "path_fulfill": 6,
    "register_move": 4,
    "register_copy": 2,
    "create_value": 2,
    "value_fulfill": 2,
    "fail": 1,
    "delete": 2,
    "create_pending": 3,
    # An upload of bytes already stored (reuse_stored_bytes): on the local disk a second
    # name for them, so later deletes and crashes meet shared bytes.
    "reuse_upload": 2,
}
FILE_KINDS = {
    "upload",
    "upload_fulfill",
    "path_fulfill",
    "register_move",
    "register_copy",
    "reuse_upload",
}
HAS_SOURCE = {"path_fulfill", "register_move", "register_copy"}
MOVES = {"path_fulfill", "register_move"}
STATUS = pb.AssetStatus.Name
AVAILABLE, PENDING, FAILED = (
    pb.ASSET_STATUS_AVAILABLE,
    pb.ASSET_STATUS_PENDING,
    pb.ASSET_STATUS_FAILED,
)


class Violation(AssertionError):
    """An invariant broke; the message names the seed, iteration, operation and asset/path."""


@dataclass
class CrashLoopConfig:
    root: Path  # storage root of the server
    database_url: str
    import_root: Path  # where the worker writes its files
    seed: int
    kills: int
    minutes: float = 0.0  # stop earlier once this much time has gone (0: no limit)
    clients: int = 4
    max_kill_delay: float = 0.8
    max_upload_bytes: int = 8 * MiB
    max_source_bytes: int = 4 * MiB
    keep_going: bool = False  # count violations and carry on (the soak) instead of raising
    extra_args: list[str] = field(default_factory=list)
    progress: Callable[[str], None] | None = None
    env: dict[str, str] = field(default_factory=dict)  # for the server, e.g. AWS_* for S3
    # Checks the bytes' side when they are not on the local disk (an object store):
    # (every FILE record) -> problems. None: the local disk under `root` is checked.
    storage_check: Callable[[list[pb.Asset]], Awaitable[list[str]]] | None = None
    # Runs after each SIGKILL, before the restart: a power cut (tests/powerloss) drops what
    # was not fsynced and remounts.
    after_kill: Callable[[], None] | None = None
    # The worker fsyncs its files and its folder as it writes and removes them, so that a
    # power cut loses none of its own (set whenever the import root is on a lazyfs).
    durable_worker_files: bool = False
    # With --workers N: SIGKILL one worker (not the supervisor) and let the supervisor
    # replace it; the audit then expects every worker's staging and no dead one's.
    kill_worker: bool = False
    # With kill_worker: seconds after the kill before the load resumes. A dead worker's
    # commit may have left its file at the final name with no record; on the local disk a
    # retry replaces it at once (no live commit holds the key); an object store replaces
    # it only once older than --orphan-grace, ABORTED ("retry shortly") until then.
    settle_after_kill: float = 0.0


@dataclass
class Report:
    seed: int
    kills: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, kind: str, what: str) -> int:
        return self.ops[f"{kind}|{what}"]

    def summary(self) -> str:
        lines = [f"crash loop: seed {self.seed}, {self.kills} kills in {self.seconds:.1f}s"]
        for kind in WEIGHTS:
            c = functools.partial(self.count, kind)
            lines.append(
                f"  {kind:15} acked {c('acked')}, in flight at a kill {c('in doubt')} "
                f"(then found applied {c('applied')}, not applied {c('not applied')}), "
                f"retried by the worker {c('retried')}"
            )
        lines.append(
            f"  between kills   {self.count('delete', 'housekeeping')} deletes (keeping the "
            f"store small), {self.count('create_pending', 'housekeeping')} promises stocked"
        )
        lines.append(f"  violations      {len(self.violations)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Known:
    """What the client was last told about an asset (an OK answer it received)."""

    id: str
    label: str
    status: int
    type: int
    size: int
    sha256: str
    failure_reason: str
    value: pb.Value | None
    storage_path: str
    task: str

    @classmethod
    def of(cls, a: pb.Asset) -> Known:
        value = None
        if a.HasField("value"):
            value = pb.Value()
            value.CopyFrom(a.value)
        return cls(
            id=a.id,
            label=a.label,
            status=a.status,
            type=a.type,
            size=a.size_bytes,
            sha256=a.sha256,
            failure_reason=a.failure_reason,
            value=value,
            storage_path=a.storage_path,
            task=a.created_by_task,
        )

    def diff(self, a: pb.Asset) -> list[str]:
        now = Known.of(a)
        out = []
        for name in (f.name for f in fields(self)):
            before, after = getattr(self, name), getattr(now, name)
            if before != after:
                if name == "status":
                    before, after = STATUS(before), STATUS(after)
                elif name == "value":
                    before, after = show_value(before), show_value(after)
                out.append(f"{name} acknowledged {before!r}, now {after!r}")
        return out


@dataclass
class Source:
    """A worker's file under the import root, unique content."""

    path: Path
    sha256: str
    size: int

    def state(self) -> str:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return "missing"
        return "intact" if hashlib.sha256(data).hexdigest() == self.sha256 else "altered"


@dataclass
class Op:
    seq: int
    kind: str
    label: str = ""
    target: str = ""
    task: str = ""
    source: Source | None = None
    data: bytes = b""
    sha256: str = ""
    with_sha: bool = False
    value: pb.Value | None = None
    reason: str = ""
    pending_type: int = 0
    # reuse_upload: the stored asset whose bytes it names (claimed: nothing deletes it
    # during the iteration) and their size.
    reuses: str = ""
    reuse_size: int = 0
    retry_of: int = 0
    chore: bool = False  # housekeeping between kills, not part of the measured load
    acked: pb.Asset | None = None
    error: str = ""

    def __str__(self) -> str:
        parts = [f"op #{self.seq} {self.kind}"]
        if self.retry_of:
            parts.append(f"(worker's retry of #{self.retry_of})")
        if self.target:
            parts.append(f"asset {self.target}")
        if self.label:
            parts.append(f"label {self.label}")
        if self.source is not None:
            parts.append(f"source {self.source.path} ({self.source.size} bytes)")
        elif self.kind.startswith("upload"):
            parts.append(f"{len(self.data)} bytes")
        if self.error:
            parts.append(f"[{self.error}]")
        return " ".join(parts)

    def applied_in(self, a: pb.Asset) -> bool:
        """Does record `a` show this op's effect?"""
        if self.kind in FILE_KINDS:
            size = self.source.size if self.source is not None else len(self.data)
            if self.kind == "reuse_upload":
                size = self.reuse_size
            return (
                a.status == AVAILABLE
                and a.type == pb.ASSET_TYPE_FILE
                and a.sha256 == self.sha256
                and a.size_bytes == size
            )
        if self.kind in ("create_value", "value_fulfill"):
            return a.status == AVAILABLE and a.HasField("value") and a.value == self.value
        if self.kind == "fail":
            return a.status == FAILED and a.failure_reason == self.reason
        if self.kind == "create_pending":
            return (
                a.status == PENDING
                and a.type == self.pending_type
                and a.created_by_task == self.task
            )
        return True  # delete: the answer names the deleted record

    def wrong_answer(self, a: pb.Asset) -> str:
        """What is wrong with an OK answer to this op ('' if nothing)."""
        if self.target and a.id != self.target:
            return f"asked about {self.target}, answered about {a.id}"
        if self.label and self.kind != "delete" and a.label != self.label:
            return f"label {a.label!r}, sent {self.label!r}"
        if not self.applied_in(a):
            return show_asset(a)
        return ""


@dataclass
class Ledger:
    """What the client knows: acknowledged assets, this iteration's ops and what broke."""

    report: Report
    known: dict[str, Known] = field(default_factory=dict)  # acked, not acked-deleted
    deleted: dict[str, Op] = field(default_factory=dict)  # acked deletes, this iteration
    claimed: set[str] = field(default_factory=set)  # targets of this iteration's ops
    ops: list[Op] = field(default_factory=list)  # this iteration's, in start order
    problems: list[str] = field(default_factory=list)
    seq: int = 0

    def next(self) -> int:
        self.seq += 1
        return self.seq

    def new_iteration(self) -> None:
        self.ops, self.problems, self.deleted = [], [], {}
        self.claimed.clear()

    def tally(self, op: Op, what: str) -> None:
        self.report.ops[f"{op.kind}|{what}"] += 1

    def claim(self, rng: random.Random, want: Callable[[Known], bool]) -> str:
        """An asset no other op of this iteration touches ('' if none): no planned races."""
        free = [k.id for k in self.known.values() if want(k) and k.id not in self.claimed]
        if not free:
            return ""
        pick = rng.choice(free)
        self.claimed.add(pick)
        return pick


def show_asset(a: pb.Asset) -> str:
    return (
        f"asset {a.id} ({a.label}, {STATUS(a.status)}, {a.size_bytes} bytes, "
        f"sha256 {a.sha256[:12] or '-'}"
        + (f", reason {a.failure_reason!r}" if a.failure_reason else "")
        + ")"
    )


def show_value(v: pb.Value | None) -> str:
    if v is None:
        return "none"
    data = value_bytes(v)
    kind = v.WhichOneof("kind") or "empty"
    return f"{kind}, {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}"


def value_bytes(v: pb.Value) -> bytes:
    raw = getattr(v, v.WhichOneof("kind") or "data")
    return raw.encode() if isinstance(raw, str) else bytes(raw)


def random_value(rng: random.Random, seq: int) -> pb.Value:
    kind = rng.choice(("text", "json", "data"))
    blob = rng.randbytes(rng.randint(0, 16 * 1024))  # a ListAssets page stays small
    if kind == "text":
        return pb.Value(text=f"op {seq}: {blob.hex()}")
    if kind == "json":
        return pb.Value(json=json.dumps({"op": seq, "blob": blob.hex()}))
    return pb.Value(data=seq.to_bytes(8, "big") + blob)


def pick_size(rng: random.Random, low: int, cap: int) -> int:
    """Mostly small, sometimes up to `cap`: many ops per second, and some long ones."""
    r = rng.random()
    if r < 0.3:
        return rng.randint(low, 4096)
    if r < 0.75:
        return rng.randint(4096, min(cap, 512 * 1024))
    return rng.randint(min(cap, 512 * 1024), cap)


def content(seed: int, size: int, tag: bytes = b"") -> bytes:
    """`size` bytes, unique per seed (and starting with `tag` when there is room)."""
    return (tag + random.Random(seed).randbytes(size))[:size]
