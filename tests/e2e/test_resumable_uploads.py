"""Resumable uploads end to end: streams cut by the client, the network and SIGKILL."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from asset_client import AssetClient, AsyncAssetClient

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.storage.local._sessions import CHECKPOINT_BYTES
from asset_service.storage.s3._config import PART_SIZE
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.e2e.helpers import MiB, expect_error, read_all
from tests.e2e.tcp_proxy import proxy_to
from tests.serverproc import ServerProcess, database_url_for, serving

DATA = os.urandom(24 * MiB + 4321)
CUT_LOG = re.compile(r"was cut at \d+ bytes; (\d+) held durably")
SHA = hashlib.sha256(DATA).hexdigest()


def header(upload_id: str, offset: int = 0, **fields: object) -> pb.UploadHeader:
    defaults: dict[str, object] = {"label": "big.bin", "expected_sha256": SHA}
    return pb.UploadHeader(upload_id=upload_id, write_offset=offset, **{**defaults, **fields})  # type: ignore[arg-type]


def _send_blocking(
    address: str, head: pb.UploadHeader, data: bytes, cut: int | None, then_header: bool
) -> pb.Asset:
    # The blocking client: grpc's asyncio one reports INTERNAL "Internal error from Core"
    # instead of the server's status when the server ends a stream while a chunk is on its
    # way (grpc/grpc#36066), as it does to a refused resume.
    started = threading.Event()
    future: list[grpc.Future] = []

    def requests() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=head)
        sent = 0
        for start in range(0, len(data), MiB):
            chunk = data[start : start + MiB]
            if cut is not None and sent + len(chunk) > cut:
                yield pb.UploadAssetRequest(chunk=chunk[: cut - sent])
                started.wait(10)
                future[0].cancel()
                return
            sent += len(chunk)
            yield pb.UploadAssetRequest(chunk=chunk)
        if then_header:
            yield pb.UploadAssetRequest(header=head)

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        future.append(stub.UploadAsset.future(requests(), timeout=60))
        started.set()
        try:
            response: pb.UploadAssetResponse = future[0].result()
        except grpc.FutureCancelledError:
            raise asyncio.CancelledError("cut by the client") from None
        return response.asset


async def send(
    address: str,
    head: pb.UploadHeader,
    data: bytes,
    cut: int | None = None,
    then_header: bool = False,
) -> pb.Asset:
    """One stream: the header, then `data` in 1 MiB chunks; with `cut`, the client cancels
    the call once that many bytes went out (at any point inside the stream). With
    `then_header`, a second header follows the data: the server refuses the stream
    (INVALID_ARGUMENT) after taking in every byte before it, a cut at an exact point."""
    return await asyncio.to_thread(_send_blocking, address, head, data, cut, then_header)


async def query(stub: pb_grpc.AssetServiceStub, upload_id: str) -> pb.QueryUploadResponse:
    return await stub.QueryUpload(pb.QueryUploadRequest(upload_id=upload_id), timeout=10)


async def committed_of(stub: pb_grpc.AssetServiceStub, upload_id: str) -> int:
    """QueryUpload's committed_bytes; 0 for an upload whose stream was cut before the
    server started it (its header never arrived: NOT_FOUND)."""
    try:
        return (await query(stub, upload_id)).committed_bytes
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0


async def resume(address: str, upload_id: str, data: bytes = DATA) -> pb.Asset:
    """QueryUpload, then the rest from committed_bytes. Right after a cut the server may
    still be making the cut stream's end durable: then the stream gets ABORTED (still
    held) or FAILED_PRECONDITION (the offset moved since the query): ask again."""
    sha = SHA if data is DATA else hashlib.sha256(data).hexdigest()
    for _ in range(100):
        async with grpc.aio.insecure_channel(address) as channel:
            committed = await committed_of(pb_grpc.AssetServiceStub(channel), upload_id)
        try:
            head = header(upload_id, committed, expected_sha256=sha)
            return await send(address, head, data[committed:])
        except grpc.RpcError as exc:
            retry = exc.code() == grpc.StatusCode.ABORTED or (
                exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                and "resume at committed_bytes=" in (exc.details() or "")
            )
            if not retry:
                raise
        await asyncio.sleep(0.1)
    raise AssertionError("the upload stayed held by its cut stream")


async def settled(stub: pb_grpc.AssetServiceStub, upload_id: str) -> int:
    """committed_bytes once the cut stream has ended on the server (it stops changing)."""
    last = -1
    for _ in range(100):
        now = await committed_of(stub, upload_id)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.1)
    raise AssertionError("committed_bytes kept changing")


async def cut_upload(stub: pb_grpc.AssetServiceStub, address: str, size: int) -> tuple[str, int]:
    """A new upload whose stream a second header ends right after `size` bytes (refused as
    INVALID_ARGUMENT): its upload id, and the bytes the server kept once settled."""
    upload_id = uuid.uuid4().hex
    await expect_error(
        send(address, header(upload_id), DATA[:size], then_header=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a second header arrived mid-upload",
    )
    return upload_id, await settled(stub, upload_id)


def session_files(root: Path) -> list[str]:
    area = root / "tmp" / "uploads"
    return sorted(str(p.relative_to(area)) for p in area.rglob("*"))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_client_cancel_at_a_random_point_resumes_byte_identical(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess, seed: int
) -> None:
    upload_id = uuid.uuid4().hex
    cuts = sorted(random.Random(seed).sample(range(1, len(DATA)), 2))
    with pytest.raises(asyncio.CancelledError):
        await send(server.address, header(upload_id), DATA, cut=cuts[0])
    committed = await settled(stub, upload_id)
    assert 0 <= committed <= cuts[0]  # what arrived is kept (on a local disk: every byte)
    with pytest.raises(asyncio.CancelledError):
        await send(
            server.address, header(upload_id, committed), DATA[committed:], cut=cuts[1] - committed
        )
    asset = await resume(server.address, upload_id)
    assert (asset.size_bytes, asset.sha256) == (len(DATA), SHA)
    assert await read_all(stub, asset.id) == DATA
    # The bytes moved into place; only the session's record stays, until it expires.
    assert [p for p in session_files(server.root) if p.endswith("/data")] == []
    again = await send(
        server.address, header(upload_id), DATA
    )  # a completed upload answers its asset
    assert again.id == asset.id
    listed = await stub.ListAssets(pb.ListAssetsRequest())
    assert [a.id for a in listed.assets] == [asset.id]


async def test_a_dropped_connection_keeps_what_arrived(server: ServerProcess) -> None:
    upload_id = uuid.uuid4().hex
    with proxy_to(server.port) as proxy:
        async with grpc.aio.insecure_channel(proxy.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            proxy.cut_after(random.Random(7).randrange(2 * MiB, 20 * MiB))
            with pytest.raises(grpc.RpcError) as cut:
                await send(proxy.address, header(upload_id), DATA)
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert proxy.cuts == 1
            committed = await settled(stub, upload_id)
            assert 0 < committed <= proxy.sent
            asset = await resume(proxy.address, upload_id)
    assert (asset.size_bytes, asset.sha256) == (len(DATA), SHA)


async def _kill_when(
    server: ServerProcess, data: bytes, upload_id: str, ready: Callable[[], Awaitable[bool]]
) -> None:
    """A stream through which the server is SIGKILLed once `ready()` says it made enough
    durable (asked after each chunk; the data is long enough that it gets there)."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        call = stub.UploadAsset(timeout=60)  # type: ignore[call-arg]
        sha = hashlib.sha256(data).hexdigest()
        await call.write(pb.UploadAssetRequest(header=header(upload_id, expected_sha256=sha)))
        with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
            for start in range(0, len(data), MiB):
                if await ready():
                    server.kill()
                await call.write(pb.UploadAssetRequest(chunk=data[start : start + MiB]))
            for _ in range(100):
                if await ready():
                    server.kill()
                await asyncio.sleep(0.1)
            raise AssertionError("the server never got there")


def checkpointed(root: Path, at_least: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        for record in (root / "tmp" / "uploads").glob("*/session.json"):
            if json.loads(record.read_text())["committed_bytes"] >= at_least:
                return True
        return False

    return ready


def parts_uploaded(minio: MinIO, prefix: str, at_least: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        async with s3_helpers.client(minio) as s3:
            listed = await s3.list_multipart_uploads(Bucket=s3_helpers.BUCKET)
            for upload in listed.get("Uploads", ()):
                if upload["Key"].startswith(prefix):
                    parts = await s3.list_parts(
                        Bucket=s3_helpers.BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    return len(parts.get("Parts", ())) >= at_least
        return False

    return ready


async def test_a_sigkilled_server_keeps_its_last_checkpoint(tmp_path: Path) -> None:
    # Past one checkpoint of the local disk (storage/local/_sessions.py): that much survives.
    data = os.urandom(CHECKPOINT_BYTES + 24 * MiB)
    upload_id = uuid.uuid4().hex
    with serving(ServerProcess(tmp_path / "data", database_url_for(tmp_path))) as server:
        await _kill_when(server, data, upload_id, checkpointed(server.root, CHECKPOINT_BYTES))
        server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            assert (await query(stub, upload_id)).committed_bytes == CHECKPOINT_BYTES
            # The restarted server hashes the durable prefix from the disk to go on.
            asset = await resume(server.address, upload_id, data)
            assert asset.sha256 == hashlib.sha256(data).hexdigest()
            assert await read_all(stub, asset.id) == data


@pytest.fixture
def s3_server(tmp_path: Path, minio: MinIO) -> Iterator[ServerProcess]:
    prefix = f"resume-{uuid.uuid4().hex[:8]}"
    server = ServerProcess(
        tmp_path / "state",
        database_url_for(tmp_path),
        extra_args=["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}"],
        env=minio.aws_env(),
    )
    server.prefix = prefix  # type: ignore[attr-defined]
    try:
        yield server.start()
    finally:
        server.stop()


async def test_on_minio_a_sigkilled_server_keeps_its_completed_parts(
    s3_server: ServerProcess, minio: MinIO
) -> None:
    upload_id = uuid.uuid4().hex
    prefix = s3_server.prefix  # type: ignore[attr-defined]
    await _kill_when(s3_server, DATA, upload_id, parts_uploaded(minio, prefix, 2))
    s3_server.start()
    async with grpc.aio.insecure_channel(s3_server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        committed = (await query(stub, upload_id)).committed_bytes
        assert committed == 2 * PART_SIZE  # whole parts only
        asset = await resume(s3_server.address, upload_id)
        assert asset.sha256 == SHA
        assert await read_all(stub, asset.id) == DATA
    left = await s3_helpers.session_leftovers(minio, f"{prefix}/")
    assert [item for item in left if not item.endswith("session.json")] == []


async def test_each_misuse_of_a_resumable_upload_gets_its_status(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess
) -> None:
    upload_id, committed = await cut_upload(stub, server.address, 3 * MiB + 5)
    assert committed == 3 * MiB + 5  # every byte before the stream ended is kept
    await expect_error(
        send(server.address, header(upload_id, committed + 1), DATA[committed + 1 :]),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"resume at committed_bytes={committed}",
    )
    await expect_error(
        send(server.address, header(upload_id, 0), DATA),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"resume at committed_bytes={committed}",
    )
    await expect_error(
        send(server.address, header(upload_id, committed, label="renamed.bin"), DATA[committed:]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "header.label differs",
    )
    await expect_error(
        send(server.address, header(upload_id, committed, tags=["x"]), DATA[committed:]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "header.tags differs",
    )
    await expect_error(
        send(server.address, header(uuid.uuid4().hex, MiB), DATA[MiB:]),
        grpc.StatusCode.NOT_FOUND,
        "start again from 0 with a new upload_id",
    )
    await expect_error(
        query(stub, uuid.uuid4().hex), grpc.StatusCode.NOT_FOUND, "unknown or has expired"
    )
    await expect_error(
        send(server.address, header("short"), b"x"), grpc.StatusCode.INVALID_ARGUMENT, "8 to 64"
    )
    await expect_error(
        send(server.address, header("", 5), b"x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "without an upload_id",
    )

    # A second stream while one is open: ABORTED, and the first one goes on unharmed.
    call = stub.UploadAsset(timeout=60)  # type: ignore[call-arg]
    await call.write(pb.UploadAssetRequest(header=header(upload_id, committed)))
    await call.write(pb.UploadAssetRequest(chunk=DATA[committed : committed + MiB]))
    await expect_error(
        send(server.address, header(upload_id, committed), DATA[committed:]),
        grpc.StatusCode.ABORTED,
        "another stream open",
    )
    for start in range(committed + MiB, len(DATA), MiB):
        await call.write(pb.UploadAssetRequest(chunk=DATA[start : start + MiB]))
    await call.done_writing()
    assert (await call).asset.sha256 == SHA


async def test_a_wrong_whole_file_fails_and_leaves_nothing(
    stub: pb_grpc.AssetServiceStub, server: ServerProcess
) -> None:
    upload_id, committed = await cut_upload(stub, server.address, 5 * MiB)
    tampered = DATA[:committed] + b"\0" + DATA[committed + 1 :]
    await expect_error(
        send(server.address, header(upload_id, committed), tampered[committed:]),
        grpc.StatusCode.DATA_LOSS,
        "but the header declared",
    )
    assert session_files(server.root) == []
    await expect_error(query(stub, upload_id), grpc.StatusCode.NOT_FOUND, "unknown")


async def test_expired_uploads_leave_nothing_on_the_local_disk(
    start_server: Callable[..., ServerProcess],
) -> None:
    # A TTL that outlasts the checks before expiry on a loaded machine (CI shares 2 cores).
    server = start_server("--upload-session-ttl", "4", "--collect-interval", "0.5")
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        upload_id, committed = await cut_upload(stub, server.address, 6 * MiB)
        assert committed == 6 * MiB
        assert session_files(server.root)
        await _until_gone(lambda: session_files(server.root))
        await expect_error(
            query(stub, upload_id), grpc.StatusCode.NOT_FOUND, "unknown or has expired"
        )
        await expect_error(
            send(server.address, header(upload_id, 6 * MiB), DATA[6 * MiB :]),
            grpc.StatusCode.NOT_FOUND,
            "start again from 0",
        )


async def test_expired_uploads_leave_nothing_on_minio(tmp_path: Path, minio: MinIO) -> None:
    prefix = f"expire-{uuid.uuid4().hex[:8]}"
    args = ["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}", "--collect-interval", "0.5"]
    args += ["--upload-session-ttl", "4"]  # outlasts the checks before expiry on a loaded machine
    url = database_url_for(tmp_path)
    env = minio.aws_env()
    with serving(ServerProcess(tmp_path / "state", url, extra_args=args, env=env)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            upload_id, committed = await cut_upload(stub, server.address, 18 * MiB)
            assert committed == 2 * PART_SIZE  # a part not filled goes
            left = await s3_helpers.session_leftovers(minio, f"{prefix}/")
            assert any(item.startswith("upload ") for item in left), left
            async with s3_helpers.client(minio) as s3:
                listed = await s3.list_multipart_uploads(Bucket=s3_helpers.BUCKET)
            assert [u for u in listed.get("Uploads", ()) if u["Key"].startswith(prefix)]

            async def leftovers() -> list[str]:
                return await s3_helpers.session_leftovers(minio, f"{prefix}/")

            await _until_gone(leftovers)
            async with s3_helpers.client(minio) as s3:
                listed = await s3.list_multipart_uploads(Bucket=s3_helpers.BUCKET)
                objects = await s3.list_objects_v2(Bucket=s3_helpers.BUCKET, Prefix=prefix)
            assert [u for u in listed.get("Uploads", ()) if u["Key"].startswith(prefix)] == []
            assert objects.get("KeyCount", 0) == 0
            await expect_error(query(stub, upload_id), grpc.StatusCode.NOT_FOUND, "expired")


async def _until_gone(found: Callable[[], object], seconds: float = 15) -> None:
    for _ in range(int(seconds * 10)):
        left = found()
        if asyncio.iscoroutine(left):
            left = await left
        if not left:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"still there after {seconds}s: {left}")


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    """A file holding DATA, for the clients to upload."""
    big = tmp_path / "big.bin"
    big.write_bytes(DATA)
    return big


async def test_the_python_client_resumes_by_itself_without_resending(
    server: ServerProcess, big_file: Path
) -> None:
    seen: list[int] = []
    with proxy_to(server.port) as proxy:
        proxy.cut_after(11 * MiB)
        async with AsyncAssetClient(proxy.address) as client:
            asset = await client.upload(big_file, progress=lambda done, total: seen.append(done))
        assert proxy.cuts == 1 and len(proxy.connections) == 2
    # What the server held when the stream was cut (it says so in its log), and what the
    # second connection carried: the rest, not the committed prefix again.
    (held,) = (int(m[1]) for m in CUT_LOG.finditer("".join(server.log)))
    assert 0 < held <= 11 * MiB
    assert len(DATA) - held <= proxy.connections[1] < len(DATA) - held + 256 * 1024
    assert (asset.size_bytes, asset.sha256) == (len(DATA), SHA)
    assert seen == sorted(seen) and seen[-1] == len(DATA)


async def test_the_python_client_starts_again_an_upload_the_server_never_saw(
    server: ServerProcess, big_file: Path
) -> None:
    with proxy_to(server.port) as proxy:
        proxy.cut_after(200)  # the connection drops before the upload's header arrives
        async with AsyncAssetClient(proxy.address) as client:
            asset = await client.upload(big_file, progress=False)
        assert proxy.cuts == 1
    assert (asset.size_bytes, asset.sha256) == (len(DATA), SHA)
    assert not CUT_LOG.search("".join(server.log))  # no stream of it was ever cut


async def test_the_sync_client_resumes_across_a_server_restart(
    server: ServerProcess, big_file: Path
) -> None:
    with proxy_to(server.port) as proxy:

        def crash_and_restart() -> None:
            # Once 9 MiB went out: SIGKILL, a new server on the same storage, and the
            # proxy sends new connections there (its old ones are reset).
            deadline = time.monotonic() + 60
            while proxy.sent < 9 * MiB and time.monotonic() < deadline:
                time.sleep(0.01)
            server.kill()
            proxy.cut_now()
            server.start()
            proxy.upstream = server.port

        async def upload() -> object:
            with AssetClient(proxy.address) as client:
                return await asyncio.to_thread(client.upload, big_file, progress=False)

        crash = asyncio.to_thread(crash_and_restart)
        asset, _ = await asyncio.gather(upload(), crash)
    assert asset.sha256 == SHA  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        assert await read_all(stub, asset.id) == DATA  # type: ignore[attr-defined]
