"""Replaying from the store: what it keeps of deleted assets, and its changes since a revision."""

from __future__ import annotations

from dataclasses import dataclass, field

from asset_service.domain.models import Asset, AssetType, Change

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
class Narrowing:
    """Which assets a replay may keep to (MetadataStore.changes_since): those whose state
    at the cut (a record's, or a tombstone's last one) has each field given; empty fields
    admit every asset.

    Each field is one a selector requires of an asset as it is, and one a tombstone keeps,
    so a replay narrowed by a selector's fields and then tested by the selector gives what
    the whole replay tested by it gives (only the status is left to the selector: a PENDING
    selector also takes promises that have left PENDING). Task, key, label and tags never
    change once an asset exists, and each has an index: the store reads through the most
    selective one rather than every change since the revision.
    """

    task: str = ""
    key: str = ""
    label: str = ""
    tags: tuple[str, ...] = ()
    type: AssetType | None = None

    def equalities(self) -> dict[str, str]:
        """Its fields given but the tags, by name (task, key, label, type: its value)."""
        given = {
            "task": self.task,
            "key": self.key,
            "label": self.label,
            "type": self.type.value if self.type is not None else "",
        }
        return {name: value for name, value in given.items() if value}

    def admits(self, asset: Asset) -> bool:
        return not (
            (self.task and asset.created_by_task != self.task)
            or (self.type is not None and asset.type is not self.type)
            or (self.label and asset.label != self.label)
            or (self.key and asset.key != self.key)
            or any(tag not in asset.tags for tag in self.tags)
        )


# Every asset: the replay of the whole store's changes.
EVERYTHING = Narrowing()


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
