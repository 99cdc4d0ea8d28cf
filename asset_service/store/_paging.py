"""ListAssets pages, shared by every store: checked tokens and pages bounded in count and bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import TypeVar

from asset_service.domain.errors import InvalidArgument, shown
from asset_service.domain.models import Asset, AssetFilter, approx_bytes

Row = TypeVar("Row")

MAX_SEQ = 2**63 - 1  # both stores keep the sequence in a signed 64-bit integer


def _fingerprint(flt: AssetFilter) -> str:
    """The filters a token was issued for, in short (tags in any order mean the same)."""
    canonical = json.dumps(
        [
            flt.status.value if flt.status is not None else None,
            flt.type.value if flt.type is not None else None,
            sorted(set(flt.tags)),
            flt.created_by_task,
            flt.label,
            # Only when set: tokens issued before keys were kept stay good.
            *([flt.key, flt.sha256] if flt.key or flt.sha256 else []),
        ]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_token(store: str, seq: int, flt: AssetFilter) -> str:
    raw = f"{store}:{seq}:{_fingerprint(flt)}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(store: str, token: str, flt: AssetFilter) -> int:
    """The sequence number in a token this store issued for these filters; InvalidArgument
    for anything else (a token reused with other filters would page through the wrong
    list: a short or empty page that looks like the end)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, text, *rest = raw.split(":")
        seq = int(text)
        if prefix != store or not 0 <= seq <= MAX_SEQ or len(rest) > 1:
            raise ValueError(prefix)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            f"page_token {shown(token)} was not issued by ListAssets; pass next_page_token as is"
        ) from None
    # A token without filters' fingerprint comes from a server before they were kept (a
    # rolling upgrade): it is taken as it is.
    if rest and rest[0] != _fingerprint(flt):
        raise InvalidArgument(
            "page_token was issued for a ListAssets with other filters; send it with the same "
            "status, type, tags, created_by_task, label, key and sha256 as the call that "
            "returned it (page_size may change), or start again without a page_token"
        )
    return seq


def fill_page(
    rows: Iterable[Row],
    limit: int,
    max_bytes: int | None,
    to_asset: Callable[[Row], Asset],
    seq_of: Callable[[Row], int],
) -> tuple[list[Asset], int | None]:
    """Records from `rows` (oldest first, at least `limit + 1` asked for) and the sequence
    number to continue after, or None when this page is the last.

    Stops at `limit` records, or before the one whose size would pass `max_bytes`, so a
    page of large VALUEs fits a response; the rows after that are never read.
    """
    page: list[Asset] = []
    used, last = 0, 0
    for row in rows:
        if len(page) == limit:
            return page, last
        asset = to_asset(row)
        used += approx_bytes(asset)
        if page and max_bytes is not None and used > max_bytes:
            return page, last
        page.append(asset)
        last = seq_of(row)
    return page, None
