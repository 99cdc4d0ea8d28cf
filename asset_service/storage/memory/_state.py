"""What outlives one MemoryStorage instance: stored bytes, staging areas, journaled moves."""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "memory://"


@dataclass(eq=False)
class StoredBytes:
    """Stored bytes; compared by identity, like a file by (device, inode)."""

    data: bytes
    placed_at: float


@dataclass(frozen=True, eq=False)
class MoveIntent:
    """A journaled move: which source goes once the record commits, and what was placed."""

    final: str
    placed: StoredBytes
    source: str | None = None
    source_data: bytes | None = None


@dataclass(eq=False)
class StagingArea:
    """One instance's staging (a process's tmp/staging/<id>): in-flight bytes and journals."""

    live: bool = True
    staging: dict[str, bytearray] = field(default_factory=dict)
    journals: dict[str, MoveIntent] = field(default_factory=dict)


@dataclass(eq=False)
class MemorySession:
    """A resumable upload's session as kept: its encoded record, its bytes (all durable:
    nothing is lost but by a restart of the test process), and the instance holding it."""

    record: bytes
    data: bytearray = field(default_factory=bytearray)
    held_by: str | None = None


@dataclass
class MemoryState:
    """What outlives one MemoryStorage; a second instance given it plays the next process.

    An instance counts as a live process from open() until close(); a closed instance whose
    area still holds unsettled moves is what a dead process leaves for recovery.
    """

    objects: dict[str, StoredBytes] = field(default_factory=dict)
    areas: dict[str, StagingArea] = field(default_factory=dict)
    # Server-side path -> -1 while a move holds it, else the number of copies reading it
    # (LocalStorage's exclusive and shared flocks).
    adopting: dict[str, int] = field(default_factory=dict)
    # Resumable uploads' sessions by key (storage/memory/_sessions.py).
    sessions: dict[str, MemorySession] = field(default_factory=dict)


@dataclass(frozen=True)
class Leftover:
    """A move a dead instance journaled but did not settle."""

    asset_id: str
    storage_path: str
    area: str
    journal: str
    intent: MoveIntent
