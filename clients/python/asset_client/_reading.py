"""Streamed reads of an asset's bytes, a whole read checked against the record."""

from __future__ import annotations

import hashlib

from asset_client._convert import pb
from asset_client.errors import DataLossError
from asset_client.models import Asset, AssetType


class Reading:
    """One ReadAsset stream: offsets in order; a whole FILE read ends with its size and
    sha256 compared with the record (the server checks each block; this checks the sum)."""

    def __init__(self, asset: Asset, offset: int, limit: int) -> None:
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be 0 or more, not {offset} and {limit}")
        self.asset = asset
        self.offset = offset
        self.limit = limit
        self.whole = offset == 0 and limit == 0 and asset.type is AssetType.FILE
        self.hasher = hashlib.sha256()
        self.received = 0

    def request(self) -> pb.ReadAssetRequest:
        return pb.ReadAssetRequest(asset_id=self.asset.id, offset=self.offset, limit=self.limit)

    def chunk(self, msg: pb.ReadAssetResponse) -> bytes:
        expected = self.offset + self.received
        if msg.offset != expected:
            raise DataLossError(
                f"asset {self.asset.id}: chunk at offset {msg.offset}, expected {expected}"
            )
        self.received += len(msg.chunk)
        if self.whole:
            self.hasher.update(msg.chunk)
        return msg.chunk

    def finish(self) -> None:
        """DataLossError if a whole read differs from the record (size, then sha256)."""
        if not self.whole:
            return
        if self.received != self.asset.size_bytes:
            raise DataLossError(
                f"asset {self.asset.id}: received {self.received} bytes, "
                f"expected {self.asset.size_bytes}"
            )
        digest = self.hasher.hexdigest()
        if self.asset.sha256 and digest != self.asset.sha256:
            raise DataLossError(
                f"asset {self.asset.id}: received bytes hash to {digest}, "
                f"expected {self.asset.sha256}"
            )
