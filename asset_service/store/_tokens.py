"""ListAssets page tokens, shared by every store: an opaque, checked form of a sequence number."""

from __future__ import annotations

import base64
import binascii

from asset_service.domain.errors import InvalidArgument, shown

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
