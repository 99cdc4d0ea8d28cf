"""End to end: one bounded collection loop for what nothing needs (issue 23, item 3).

Each kind goes a bounded number per run (--retention-sweep-limit 1: one per run, each run
logged), counted in asset_service_reclaimed_total{kind}; what a live upload or a live
process still needs is never collected, however old its session's expiry says it is.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.e2e.helpers import read_all
from tests.e2e.scrape import metrics_port, scrape
from tests.serverproc import ServerProcess, database_url_for, serving

COLLECT = ["--metrics-listen", "127.0.0.1:0", "--collect-interval", "0.3"]
ONE_PER_RUN = ["--retention-sweep-limit", "1"]


def collecting(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
    """A server (not started) that collects often, one thing a run."""
    url = database_url_for(tmp_path)
    return ServerProcess(
        tmp_path / "data", url, extra_args=[*COLLECT, *ONE_PER_RUN, *flags], env=env
    )


async def until(done: Callable[[], bool], server: ServerProcess, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "".join(server.log[-40:])
        await asyncio.sleep(0.1)


def reclaimed(port: int, kind: str) -> float:
    return scrape(port).get("asset_service_reclaimed_total", {"kind": kind})


def runs_logged(server: ServerProcess, words: str) -> list[str]:
    return [ln for ln in server.log if words in ln]


def _stream(address: str, requests: Iterator[pb.UploadAssetRequest]) -> pb.UploadAssetResponse:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        response: pb.UploadAssetResponse = stub.UploadAsset(requests, timeout=60)
        return response


def cut_session(address: str, upload_id: str, data: bytes) -> None:
    """A resumable upload whose stream ends without completing: its bytes stay in a
    session (a second header makes the server end the stream, after taking the bytes)."""
    head = pb.UploadHeader(
        upload_id=upload_id, label="s.bin", expected_sha256=hashlib.sha256(data).hexdigest()
    )
    requests = iter(
        [
            pb.UploadAssetRequest(header=head),
            pb.UploadAssetRequest(chunk=data),
            pb.UploadAssetRequest(header=head),
        ]
    )
    try:
        _stream(address, requests)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
    else:
        raise AssertionError("the second header was taken")


def slow_upload(address: str, data: bytes, seconds: float, upload_id: str = "") -> pb.Asset:
    """One upload whose chunks come over `seconds` (a live stream across collections)."""
    head = pb.UploadHeader(
        upload_id=upload_id, label="live.bin", expected_sha256=hashlib.sha256(data).hexdigest()
    )
    pieces = 10

    def requests() -> Iterator[pb.UploadAssetRequest]:
        yield pb.UploadAssetRequest(header=head)
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            time.sleep(seconds / pieces)
            yield pb.UploadAssetRequest(chunk=data[start : start + step])

    return _stream(address, requests()).asset


def session_folders(root: Path) -> list[str]:
    area = root / "tmp" / "uploads"
    return sorted(p.name for p in area.iterdir()) if area.is_dir() else []


async def test_expired_upload_sessions_go_one_per_run_counted(tmp_path: Path) -> None:
    # A TTL that outlasts making the three on a loaded machine (CI shares 2 cores).
    with serving(collecting(tmp_path, "--upload-session-ttl", "4")) as server:
        port = metrics_port(server)
        for _ in range(3):
            await asyncio.to_thread(cut_session, server.address, uuid.uuid4().hex, b"x" * 1000)
        assert len(session_folders(server.root)) == 3
        await until(lambda: not session_folders(server.root), server)
        assert reclaimed(port, "upload_sessions") == 3
    runs = runs_logged(server, "expired upload session(s)")
    assert len(runs) == 3 and all("removed 1 expired" in ln for ln in runs), runs


def dead_staging(root: Path, name: str) -> Path:
    """What a server process that died (SIGKILL, power cut) leaves: its staging folder
    with an upload's staging file, and a lock file nobody holds."""
    folder = root / "tmp" / "staging" / name
    folder.mkdir(parents=True)
    (folder / ".lock").touch()
    (folder / uuid.uuid4().hex).write_bytes(b"half an upload")
    return folder


async def test_staging_of_dead_processes_goes_one_per_run_counted(tmp_path: Path) -> None:
    with serving(collecting(tmp_path)) as server:
        port = metrics_port(server)
        dead = [dead_staging(server.root, f"999{i}-deadbeef") for i in range(3)]
        # A live process's staging (another server on this disk): its lock is held.
        live = dead_staging(server.root, "4242-0badcafe")
        lock = os.open(live / ".lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            await until(lambda: not any(f.exists() for f in dead), server)
            await asyncio.sleep(1)  # three more runs
            assert live.is_dir() and len(list(live.iterdir())) == 2
        finally:
            os.close(lock)
        assert reclaimed(port, "staging") == 3
    runs = runs_logged(server, "staging leftover(s) of dead processes")
    assert len(runs) == 3 and all("collected 1 staging" in ln for ln in runs), runs


async def test_live_uploads_keep_their_staging_and_sessions(tmp_path: Path) -> None:
    # Sessions expire a second after their stream's start; collections run every 0.3 s
    # with no orphan grace: a stream open for 3 s spans ten of them.
    data = os.urandom(3 * 1024 * 1024)
    flags = ["--upload-session-ttl", "1", "--orphan-grace", "0"]
    with serving(collecting(tmp_path, *flags)) as server:
        port = metrics_port(server)
        resumable = asyncio.to_thread(slow_upload, server.address, data, 3, uuid.uuid4().hex)
        plain = asyncio.to_thread(slow_upload, server.address, data[::-1], 3)
        made = await asyncio.gather(resumable, plain)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            assert await read_all(stub, made[0].id) == data
            assert await read_all(stub, made[1].id) == data[::-1]
        scraped = scrape(port)
        for kind in ("upload_sessions", "staging", "orphan_files"):
            assert scraped.get("asset_service_reclaimed_total", {"kind": kind}) == 0, kind


async def test_cached_object_store_copies_go_one_per_run_counted(
    tmp_path: Path, minio: MinIO
) -> None:
    prefix = f"cache-{uuid.uuid4().hex[:8]}"
    flags = ["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}", "--manifest-ttl", "60"]
    with serving(collecting(tmp_path, *flags, env=minio.aws_env())) as server:
        port = metrics_port(server)
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            # A real copy: a manifest of an object-store FILE input.
            head = pb.UploadHeader(label="in.bin")
            done = await stub.UploadAsset(
                iter([pb.UploadAssetRequest(header=head), pb.UploadAssetRequest(chunk=b"in")]),
                timeout=20,
            )
            manifest = await stub.GetManifest(
                pb.GetManifestRequest(asset_mappings={"in": done.asset.id}), timeout=20
            )
        cache = server.root / "tmp" / "cache"
        used = cache / done.asset.sha256
        assert used.is_file()
        old = time.time() - 120  # unused for longer than --manifest-ttl
        stale = []
        for name in ("a" * 64, "b" * 64, f"{'c' * 64}.{uuid.uuid4().hex}.part"):
            (cache / name).write_bytes(b"cached")
            age = old if not name.endswith(".part") else time.time() - 7200  # a cut download
            os.utime(cache / name, (age, age))
            stale.append(cache / name)
        await until(lambda: not any(p.exists() for p in stale), server)
        await asyncio.sleep(1)
        assert used.is_file(), "a copy used within --manifest-ttl stays"
        assert reclaimed(port, "cache_copies") == 3
        assert Path(manifest.manifest_path).is_file()
    runs = runs_logged(server, "cached object-store copy(ies)")
    assert len(runs) == 3 and all("removed 1 cached" in ln for ln in runs), runs
