"""What every use case of the manager works over: its ports, limits and shared state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asset_service.domain.commits import Committer
from asset_service.domain.errors import AssetError, NotFound
from asset_service.domain.integrity import Integrity
from asset_service.domain.locks import KeyedLocks
from asset_service.domain.manager._base import Limits
from asset_service.domain.models import (
    EXPIRY_TTL,
    EXPLICIT_EXPIRIES,
    Asset,
    RuleExpiry,
    Status,
    new_asset_id,
    parse_asset_id,
)
from asset_service.domain.ports import BlobStorage, ManifestStore, MetadataStore
from asset_service.domain.retention import by_rules, check_ttl
from asset_service.domain.scrub import Scrubber
from asset_service.domain.watch import ChangeHub


@dataclass
class Context:
    """One manager's state, shared by its use cases (the functions of this package's
    modules take it first)."""

    store: MetadataStore
    storage: BlobStorage
    limits: Limits
    manifests: ManifestStore | None
    hub: ChangeHub
    commits: Committer
    integrity: Integrity
    scrubber: Scrubber
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    # This manager's name as a sweeper (one sweeps at a time per store).
    sweeper: str = field(default_factory=new_asset_id)
    # Resumable uploads' suspends and completions in flight: they run to the end even if
    # their RPC is cancelled (a cut stream is exactly that), and stop() waits for them.
    session_work: set[asyncio.Task[Any]] = field(default_factory=set)
    # Where the next orphan collection resumes its pass over the storage ("": the start).
    orphan_cursor: str = ""

    @classmethod
    def over(
        cls,
        store: MetadataStore,
        storage: BlobStorage,
        limits: Limits,
        manifests: ManifestStore | None = None,
    ) -> Context:
        """A context over these ports, with its own change hub, committer and checks."""
        integrity = Integrity(store, storage)
        return cls(
            store=store,
            storage=storage,
            limits=limits,
            manifests=manifests,
            hub=ChangeHub(limits.watch_buffer_bytes, limits.watch_history_bytes),
            commits=Committer(store),
            integrity=integrity,
            scrubber=Scrubber(store, integrity),
        )


async def get(ctx: Context, asset_id: str) -> Asset:
    asset_id = parse_asset_id(asset_id)
    asset = await ctx.store.get(asset_id)
    if asset is None:
        raise NotFound(f"asset {asset_id} not found")
    return asset


def with_expiry(ctx: Context, asset: Asset, ttl_seconds: int = 0) -> Asset:
    """A new record with its expiry: the client's TTL (counted from its creation), or
    the first matching operator rule's (none for a PENDING promise: its state's rule
    applies when it is fulfilled or failed)."""
    if check_ttl(ttl_seconds):
        at = asset.created_at + timedelta(seconds=ttl_seconds)
        return dataclasses.replace(asset, expires_at=at, expiry_rule=EXPIRY_TTL)
    by_rule = rule_expiry(ctx, asset, asset.status, asset.created_at)
    if by_rule is None:
        return asset
    return dataclasses.replace(asset, expires_at=by_rule.at, expiry_rule=by_rule.rule)


def rule_expiry(ctx: Context, current: Asset, status: Status, when: datetime) -> RuleExpiry | None:
    """The operator rules' expiry for `current` reaching `status` at `when`: None if a
    client chose its expiry, or no rule matches."""
    if current.expiry_rule in EXPLICIT_EXPIRIES:
        return None
    return by_rules(
        ctx.limits.expiry_rules,
        status,
        current.type,
        current.tags,
        current.created_by_task,
        when,
    )


async def space_freed(ctx: Context) -> None:
    """Bytes were removed: let the store take back its disk-full reserve at once,
    before new bytes take the room (what it answers is for the next write to hear)."""
    with contextlib.suppress(AssetError):
        await ctx.store.check_room()
