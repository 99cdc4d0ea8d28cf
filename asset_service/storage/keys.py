"""A storage key's components, checked: the keys domain/keys.py names, and nothing else."""

from __future__ import annotations

from asset_service.domain.errors import InvalidArgument
from asset_service.domain.keys import AREAS
from asset_service.storage import fs


def key_parts(key: str) -> tuple[str, ...]:
    """The components of a key under uploads/ or generated/; InvalidArgument otherwise."""
    parts = fs.relative_parts(key, f"storage key {key!r}")
    if parts[0] not in AREAS or len(parts) < 2:
        raise InvalidArgument(f"storage key {key!r} is outside uploads/ and generated/")
    return parts
