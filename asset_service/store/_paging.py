"""ListAssets pages, shared by every store: checked tokens and pages bounded in count and bytes."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from typing import TypeVar

from asset_service.domain.errors import InvalidArgument, shown
from asset_service.domain.models import Asset, approx_bytes

Row = TypeVar("Row")

MAX_SEQ = 2**63 - 1  # both stores keep the sequence in a signed 64-bit integer


def encode_token(store: str, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{store}:{seq}".encode()).decode().rstrip("=")


def decode_token(store: str, token: str) -> int:
    """The sequence number in a token this store issued; InvalidArgument for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, text = raw.partition(":")
        seq = int(text)
        if prefix != store or not 0 <= seq <= MAX_SEQ:
            raise ValueError(prefix)
        return seq
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(
            f"page_token {shown(token)} was not issued by ListAssets; pass next_page_token as is"
        ) from None


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
