"""Helpers shared by the end-to-end tests: uploads, storage inspection, error checks."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc

MiB = 1024 * 1024


def pattern_chunks(total: int, chunk: int = MiB, seed: bytes = b"seed") -> Iterable[bytes]:
    """Deterministic, incompressible-looking bytes, generated chunk by chunk."""
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(8192))
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        offset = (sent // chunk) % len(block)
        piece = (block[offset:] + block[:offset]) * (n // len(block) + 1)
        yield piece[:n]
        sent += n


def digest_of(chunks: Iterable[bytes]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for c in chunks:
        h.update(c)
        size += len(c)
    return h.hexdigest(), size


async def upload(
    stub: pb_grpc.AssetServiceStub,
    chunks: Iterable[bytes],
    timeout: float = 120,
    **header: object,
) -> pb.Asset:
    async def requests() -> AsyncIterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(**header))  # type: ignore[arg-type]
        for chunk in chunks:
            yield pb.UploadAssetRequest(chunk=chunk)

    response = await stub.UploadAsset(requests(), timeout=timeout)
    return response.asset


def upload_sync(address: str, chunks: Iterable[bytes], **header: object) -> pb.Asset:
    """UploadAsset through the sync client, which reports the server's status as sent.

    The asyncio client does not when the server ends the stream early (a limit, a full
    disk) while a chunk is on its way: the failed write turns the server's status into
    "INTERNAL: Internal error from Core" (grpc/grpc#36066). Run it with asyncio.to_thread.
    """

    def requests() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=pb.UploadHeader(**header))  # type: ignore[arg-type]
        for chunk in chunks:
            yield pb.UploadAssetRequest(chunk=chunk)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        response: pb.UploadAssetResponse = stub.UploadAsset(requests(), timeout=60)
        return response.asset


async def read_all(stub: pb_grpc.AssetServiceStub, asset_id: str) -> bytes:
    parts = [r.chunk async for r in stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset_id))]
    return b"".join(parts)


def stored_files(root: Path) -> list[Path]:
    """Every file in the storage's final areas and staging (not the lock files, not the db)."""
    found = []
    for area in ("uploads", "generated", "tmp/staging"):
        base = root / area
        if base.exists():
            found += [p for p in base.rglob("*") if p.is_file() and p.name != ".lock"]
    return sorted(found)


async def all_assets(stub: pb_grpc.AssetServiceStub) -> list[pb.Asset]:
    assets, token = [], ""
    while True:
        page = await stub.ListAssets(pb.ListAssetsRequest(page_size=1000, page_token=token))
        assets += page.assets
        token = page.next_page_token
        if not token:
            return assets


async def expect_error(
    call: object, code: grpc.StatusCode, *fragments: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.RpcError) as info:  # the asyncio and the sync client's errors
        await call  # type: ignore[misc]
    err: grpc.aio.AioRpcError = info.value  # type: ignore[assignment]
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    for fragment in fragments:
        assert fragment in (err.details() or ""), f"{fragment!r} not in {err.details()!r}"
    return err
