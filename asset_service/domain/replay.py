"""Replaying from the store: what it keeps of deleted assets, and its changes since a revision."""

from __future__ import annotations

from dataclasses import dataclass, field

from asset_service.domain.models import Asset, Change

# Changes a selector watch reads from the store per call while it replays from there.
REPLAY_READ_BATCH = 256
# How long a store keeps a deleted asset's tombstone (--watch-tombstone-ttl): how far back
# a selector watch can resume from the store.
DEFAULT_TOMBSTONE_TTL_SECONDS = 3600.0


def tombstone(asset: Asset) -> Asset:
    """What a store keeps of an asset deleted at `asset.revision` (asset: its last state,
    updated_by the deleter): what a selector tests (task, tags, status, type, label, key) and
    who deleted it when, and why (deletion_reason: expired, by which rule). Every store
    keeps exactly these fields, so a DELETE replayed from any of them is the same."""
    return Asset(
        id=asset.id,
        label=asset.label,
        status=asset.status,
        type=asset.type,
        media_type=asset.media_type,
        created_at=asset.created_at,
        updated_at=asset.updated_at,
        created_by_task=asset.created_by_task,
        tags=tuple(asset.tags),
        revision=asset.revision,
        created_by=asset.created_by,
        updated_by=asset.updated_by,
        deletion_reason=asset.deletion_reason,
        key=asset.key,
    )


@dataclass(frozen=True)
class Replay:
    """The store's changes after a revision, read in ONE consistent cut
    (MetadataStore.changes_since).

    State-based, not event-based: each asset that changed appears once, with its state
    at the cut (a PUT of the record without its value), and each deleted one as its
    tombstone (a DELETE); the intermediate states are gone. `changes` is in revision
    order. `revision`: the store's revision at the cut. Unless `more` (the limit was
    reached: read again after the last change's revision), every change up to
    `revision` is accounted for.
    """

    changes: list[Change] = field(default_factory=list)
    revision: int = 0
    more: bool = False

    @property
    def reaches(self) -> int:
        """The revision up to which this replay accounts for every change."""
        if self.more:
            return self.changes[-1].revision
        return self.revision


def merged(records: list[Change], tombstones: list[Change], revision: int, limit: int) -> Replay:
    """One Replay of at most `limit` changes from the records changed and the tombstones
    after a revision, each list sorted by revision and read with the same `limit`.

    A list that came back full may go on past its last revision: nothing beyond that is
    known yet, so the replay stops there (`more`) and the rest is read next time.
    """
    both = sorted(records + tombstones, key=lambda c: c.revision)
    ends = [part[-1].revision for part in (records, tombstones) if len(part) >= limit]
    if ends:
        upto = min(ends)
        both = [c for c in both if c.revision <= upto]
    if len(both) > limit:
        return Replay(both[:limit], revision, more=True)
    return Replay(both, revision, more=bool(ends))
