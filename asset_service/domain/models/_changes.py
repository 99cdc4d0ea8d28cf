"""What reads return and changes report: filters, pages, change and watch events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from asset_service.domain.models._records import Asset, AssetType, Status


@dataclass(frozen=True)
class AssetFilter:
    status: Status | None = None
    type: AssetType | None = None
    tags: tuple[str, ...] = ()
    created_by_task: str = ""
    label: str = ""
    key: str = ""
    sha256: str = ""


class ChangeKind(enum.StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class Change:
    """One committed change, as the store's change source reports it."""

    kind: ChangeKind
    asset: Asset

    @property
    def revision(self) -> int:
        return self.asset.revision


class WatchEventKind(enum.StrEnum):
    SNAPSHOT = "SNAPSHOT"  # the state when the watch began
    CHANGED = "CHANGED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class WatchEvent:
    """What a watcher is sent: the asset's state with its kind of event."""

    kind: WatchEventKind
    asset: Asset

    @property
    def revision(self) -> int:
        return self.asset.revision


@dataclass(frozen=True)
class Resync:
    """The change source lost history (e.g. its resume point fell off the oplog).

    Every subscriber must re-read the current state of what it watches.
    """

    reason: str


@dataclass(frozen=True)
class Page:
    assets: list[Asset] = field(default_factory=list)
    next_token: str = ""
    # The store's revision the page was read at (one consistent cut with it): every change
    # the page does not show has a higher revision. 0 where a store cannot tell.
    revision: int = 0
