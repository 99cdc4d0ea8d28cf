"""End to end: stored bytes changed behind the server's back are DATA_LOSS, never served."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import MiB, expect_error, pattern_chunks, read_all, upload

LOSS = grpc.StatusCode.DATA_LOSS
SIZE = 3 * MiB + 123  # several read chunks, so a short read would be visible


def truncate(path: Path, scratch: Path) -> None:
    os.truncate(path, SIZE - 1)


def append(path: Path, scratch: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"appended")


def remove(path: Path, scratch: Path) -> None:
    path.unlink()


def symlink_to_identical_copy(path: Path, scratch: Path) -> None:
    """Same bytes, but not the stored file: following it would serve anything it names."""
    copy = scratch / "identical-copy"
    shutil.copyfile(path, copy)
    path.unlink()
    path.symlink_to(copy)


def symlink_to_other_file(path: Path, scratch: Path) -> None:
    other = scratch / "other"
    other.write_bytes(b"x" * SIZE)
    path.unlink()
    path.symlink_to(other)


TAMPERINGS: dict[str, Callable[[Path, Path], None]] = {
    "truncated": truncate,
    "appended": append,
    "removed": remove,
    "symlink to an identical copy": symlink_to_identical_copy,
    "symlink to another file": symlink_to_other_file,
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
async def test_tampered_stored_bytes_are_data_loss(
    stub: pb_grpc.AssetServiceStub, tmp_path: Path, how: str
) -> None:
    asset = await upload(stub, pattern_chunks(SIZE), label="stored.bin")
    healthy = await upload(stub, pattern_chunks(1000, seed=b"ok"), label="healthy.bin")
    assert len(await read_all(stub, asset.id)) == SIZE
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    TAMPERINGS[how](Path(asset.storage_path), scratch)

    # Nothing at all is streamed: no silent short or long read, no followed link.
    received = 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for response in stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id)):
            received += len(response.chunk)
    assert info.value.code() == LOSS, f"{how}: {info.value.code()} {info.value.details()}"
    assert asset.id in (info.value.details() or "")
    assert received == 0, f"{how}: {received} bytes were served before the error"
    ranged = stub.ReadAsset(pb.ReadAssetRequest(asset_id=asset.id, offset=10, limit=100))
    await expect_error(ranged.read(), LOSS, asset.id)

    await expect_error(
        stub.GetManifest(
            pb.GetManifestRequest(asset_mappings={"video": asset.id, "ok": healthy.id})
        ),
        LOSS,
        asset.id,
    )
    # Other assets are unaffected; the tampered one can still be deleted.
    assert len(await read_all(stub, healthy.id)) == 1000
    manifest = await stub.GetManifest(pb.GetManifestRequest(asset_mappings={"ok": healthy.id}))
    assert dict(manifest.entries) == {"ok": healthy.storage_path}
    await stub.DeleteAsset(pb.DeleteAssetRequest(asset_id=asset.id))
    for name in ("identical-copy", "other"):
        if (scratch / name).exists():  # the link was removed, never its target
            assert (scratch / name).stat().st_size == SIZE
