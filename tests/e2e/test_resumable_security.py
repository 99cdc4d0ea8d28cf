"""Resumable uploads on a secured server: a session belongs to the principal that started it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import MiB, expect_error
from tests.e2e.security_helpers import ORCH, WORKER, bearer, token_server
from tests.serverproc import ServerProcess

DATA = bytes(range(256)) * (3 * MiB // 256) + b"tail"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ServerProcess]:
    with token_server(tmp_path) as server:
        yield server


def stream(
    address: str,
    metadata: tuple[tuple[str, str], ...],
    head: pb.UploadHeader,
    data: bytes,
    then_header: bool = False,
) -> pb.Asset:
    """One upload stream (blocking client: it reports the server's status as sent)."""

    def requests() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=head)
        for start in range(0, len(data), MiB):
            yield pb.UploadAssetRequest(chunk=data[start : start + MiB])
        if then_header:  # the server refuses the stream after taking every byte before
            yield pb.UploadAssetRequest(header=head)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        response: pb.UploadAssetResponse = stub.UploadAsset(
            requests(), metadata=metadata, timeout=30
        )
        return response.asset


async def test_a_task_token_resumes_and_queries_only_its_own_uploads(
    secured: ServerProcess,
) -> None:
    async with grpc.aio.insecure_channel(secured.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)

        async def promise(task: str) -> tuple[str, tuple[tuple[str, str], ...]]:
            created = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id=task, label="out.bin"), metadata=ORCH
            )
            minted = await stub.MintTaskToken(pb.MintTaskTokenRequest(task_id=task), metadata=ORCH)
            return created.asset.id, tuple(bearer(minted.token))

        mine, task = await promise("task-a")
        theirs, other_task = await promise("task-b")
        upload_id = uuid.uuid4().hex
        head = pb.UploadHeader(pending_asset_id=mine, expected_sha256=SHA, upload_id=upload_id)
        with pytest.raises(grpc.RpcError):
            stream(secured.address, task, head, DATA[: 2 * MiB], then_header=True)

        query = pb.QueryUploadRequest(upload_id=upload_id)
        state = await stub.QueryUpload(query, metadata=task)
        assert state.committed_bytes == 2 * MiB
        # Anyone else asking for this upload_id finds nothing: not another task, not a
        # worker, whatever they know of it.
        for someone in (other_task, tuple(WORKER)):
            await expect_error(
                stub.QueryUpload(query, metadata=someone),
                grpc.StatusCode.NOT_FOUND,
                "unknown or has expired",
            )
        resumed = pb.UploadHeader()
        resumed.CopyFrom(head)
        resumed.write_offset = 2 * MiB
        await expect_error(stub.QueryUpload(query, metadata=()), grpc.StatusCode.UNAUTHENTICATED)
        # Another task cannot even name this promise; a worker can, but not this upload.
        with pytest.raises(grpc.RpcError) as denied:
            stream(secured.address, other_task, resumed, DATA[2 * MiB :])
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unknown:
            stream(secured.address, tuple(WORKER), resumed, DATA[2 * MiB :])
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        done = stream(secured.address, task, resumed, DATA[2 * MiB :])
        assert (done.id, done.status, done.sha256) == (mine, pb.ASSET_STATUS_AVAILABLE, SHA)
        state = await stub.QueryUpload(query, metadata=task)
        assert state.asset.id == mine and state.committed_bytes == len(DATA)
        still = await stub.GetAsset(pb.GetAssetRequest(asset_id=theirs), metadata=ORCH)
        assert still.asset.status == pb.ASSET_STATUS_PENDING
