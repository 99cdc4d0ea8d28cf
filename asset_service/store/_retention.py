"""What every store says the same way about retention: who holds an asset, whether it may
go, the largest keys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from asset_service.domain.errors import Conflict, Held
from asset_service.domain.models import Asset, Removal, Status
from asset_service.domain.usage import ALL, UsageGroup


def holders(asset: Asset, now: datetime, manifests: bool = True) -> list[str]:
    """What holds `asset` back at `now`: each hold, and (`manifests`: from expiring, not
    from DeleteAsset) a manifest within its TTL."""
    found = [hold.describe() for hold in asset.holds]
    if manifests and asset.retained_until is not None and asset.retained_until > now:
        when = asset.retained_until.astimezone(UTC).isoformat(timespec="seconds")
        found.append(f"a manifest that lists it (kept until {when.replace('+00:00', 'Z')})")
    return found


def check_removal(asset: Asset, removal: Removal | None) -> None:
    """Refuse a deletion `removal` does not allow: an expiry's before the asset expired
    (Conflict), one that needs the asset unheld while something holds it (Held). `asset`
    carries its holds."""
    if removal is None:
        return
    now = removal.now
    if removal.expired:
        assert now is not None
        due = asset.expires_at
        if asset.status is Status.PENDING or due is None or due > now:
            raise Conflict(f"asset {asset.id} has not expired (it expires at {due})")
    if removal.unheld or removal.expired:
        assert now is not None
        found = holders(asset, now, manifests=removal.expired)
        if found:
            raise Held(asset.id, found)


def usage_keys(group: str, keys: Sequence[str]) -> list[str] | None:
    """The keys of `group` whose cells GetUsage reads: none for the totals alone (group ALL
    or STATUS: the totals' cells are all there is), the keys asked for (each once), or None:
    the largest ones, as the store ranks them (top_keys, or its index)."""
    if group in (ALL, UsageGroup.STATUS.value):
        return []
    return list(dict.fromkeys(keys)) if keys else None


def first_keys(ranked: list[str], limit: int) -> tuple[list[str], bool]:
    """The first `limit` of `ranked` (read up to `limit` + 1), and whether there were more."""
    return ranked[:limit], len(ranked) > limit


def top_keys(totals: Mapping[str, tuple[int, int]], limit: int) -> tuple[list[str], bool]:
    """The `limit` keys holding the most bytes (then the most assets, then by key), and
    whether there were more."""
    ranked = sorted(totals.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    return first_keys([key for key, _ in ranked], limit)
