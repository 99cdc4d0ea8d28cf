"""The sweeps' claims in a store that one process owns (memory, SQLite)."""

from __future__ import annotations

from datetime import datetime, timedelta


class LocalSweepClaim:
    """One holder at a time until its claim runs out (several managers may share one
    in-process store, as several servers share a database)."""

    def __init__(self) -> None:
        self._holder: tuple[str, datetime] | None = None

    def claim(self, holder: str, seconds: float, now: datetime) -> bool:
        current = self._holder
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._holder = (holder, now + timedelta(seconds=seconds))
        return True


class LocalSweepClaims:
    """One LocalSweepClaim per sweep name ("lease", "retention")."""

    def __init__(self) -> None:
        self._claims: dict[str, LocalSweepClaim] = {}

    def claim(self, holder: str, seconds: float, now: datetime, name: str = "lease") -> bool:
        return self._claims.setdefault(name, LocalSweepClaim()).claim(holder, seconds, now)
