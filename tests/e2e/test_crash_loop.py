"""End to end: SIGKILL under mixed load, again and again; nothing acknowledged or owned is lost."""

from __future__ import annotations

import collections
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from tests.backends import MinIO
from tests.contract import s3_helpers
from tests.crashloop import WEIGHTS, CrashLoop, CrashLoopConfig, Report
from tests.serverproc import database_url_for, drop_database_of

# A fixed seed keeps failures reproducible; CRASH_LOOP_SEED=<n> explores other schedules.
SEED = int(os.environ.get("CRASH_LOOP_SEED", "8008"))


async def _crash_loop(tmp_path: Path, import_root: Path, kills: int, **options: Any) -> Report:
    print(f"crash loop seed {SEED} (set CRASH_LOOP_SEED to change it), {kills} kills")
    url = database_url_for(tmp_path)
    loop = CrashLoop(
        CrashLoopConfig(
            root=tmp_path / "data",
            database_url=url,
            import_root=import_root,
            seed=SEED,
            kills=kills,
            progress=print,
            **options,
        )
    )
    try:
        report = await loop.run()
    finally:
        drop_database_of(url)
    print(report.summary())
    assert report.kills == kills
    assert report.violations == []
    # The load must really have run: every kind acknowledged, and kills that caught
    # path fulfills and moves mid-flight (the operations a crash can destroy).
    for kind in WEIGHTS:
        assert report.count(kind, "acked") > 0, f"no {kind} was acknowledged"
    caught = sum(report.count(k, "in doubt") for k in ("path_fulfill", "register_move"))
    assert caught >= kills // 4, f"only {caught} moves were in flight at a kill"
    return report


@pytest.mark.slow
async def test_crash_loop_hardlink_path(tmp_path: Path, import_root: Path) -> None:
    """Import root and storage on one filesystem: moves can be links/renames."""
    assert import_root.stat().st_dev == tmp_path.stat().st_dev
    await _crash_loop(tmp_path, import_root, kills=16)


@pytest.mark.slow
async def test_crash_loop_two_workers(tmp_path: Path, import_root: Path) -> None:
    """--workers 2 sharing one SQLite file and storage root: the whole server (supervisor
    and both workers, which die with it) SIGKILLed under load, restarted, audited."""
    await _crash_loop(tmp_path, import_root, kills=6, extra_args=["--workers", "2"])


@pytest.mark.slow
async def test_crash_loop_one_of_two_workers(tmp_path: Path, import_root: Path) -> None:
    """--workers 2: the worker holding the load's connection SIGKILLed under load while the
    other lives on; the supervisor replaces it, and nothing acknowledged through either is
    lost. Start-up keeps young unreferenced files here (the other worker may be committing
    them: the sweep goes by --orphan-grace), so leaks are the whole-server loops' to find.
    With the default grace (10m), the load resumes as soon as the new worker serves: a
    dead worker's half-made commit, however young, is replaced at once by a retry (no
    live commit holds its key); it used to answer ABORTED for the whole grace."""
    await _crash_loop(
        tmp_path,
        import_root,
        kills=6,
        extra_args=["--workers", "2", "--orphan-grace", "10m"],
        kill_worker=True,
    )


@pytest.fixture
def tmpfs_import_root(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "worker-tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            "this test needs the import root on another filesystem and could not mount a "
            f"tmpfs at {mount} (run as root, or with CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
async def test_crash_loop_copy_path(tmp_path: Path, tmpfs_import_root: Path) -> None:
    """Import root on a tmpfs: no link or rename into storage; every move is a copy."""
    assert tmpfs_import_root.stat().st_dev != tmp_path.stat().st_dev
    await _crash_loop(tmp_path, tmpfs_import_root, kills=8)


@pytest.mark.slow
async def test_crash_loop_on_minio(tmp_path: Path, import_root: Path, minio: MinIO) -> None:
    """FILE bytes in a real object store: the same guarantees, checked in the bucket.

    Identical bytes are stored once there (reuse_upload, and uploads of bytes already
    stored): several records point at one object, and deletes and kills meet it. Each
    record must find its object (no byte lost while referenced), and every object must be
    pointed at by some record (none leaked after the last reference went)."""
    prefix = f"crash-{uuid.uuid4().hex[:8]}/"
    most_holders = 0  # the most records seen pointing at one object, over the audits

    async def bucket_check(records: list[pb.Asset]) -> list[str]:
        nonlocal most_holders
        problems = []
        async with s3_helpers.client(minio) as s3:
            stored = set()
            for area in ("uploads/", "generated/"):
                pages = s3.get_paginator("list_objects_v2").paginate(
                    Bucket=s3_helpers.BUCKET, Prefix=prefix + area
                )
                async for page in pages:
                    stored |= {
                        f"s3://{s3_helpers.BUCKET}/{o['Key']}" for o in page.get("Contents", [])
                    }
            holders = collections.Counter(a.storage_path for a in records if a.storage_path)
            most_holders = max(most_holders, *holders.values(), 0)
            problems += [f"orphan object (--orphan-grace 0): {p}" for p in stored - set(holders)]
            problems += [
                f"asset {a.id} ({a.label}, one of {holders[a.storage_path]} records at its "
                f"object) points at a missing object: {a.storage_path}"
                for a in records
                if a.storage_path and a.storage_path not in stored
            ]
            staged = await s3_helpers.staged(minio, prefix)
            if staged:
                problems.append(f"{staged} staging objects or multipart uploads left in the bucket")
        return problems

    await _crash_loop(
        tmp_path,
        import_root,
        kills=8,
        extra_args=["--storage-url", f"s3://{s3_helpers.BUCKET}/{prefix}"],
        env=minio.aws_env(),
        storage_check=bucket_check,
    )
    assert most_holders > 1, "no object was ever held by two records: nothing was shared"
