"""End to end: SIGKILL under mixed load, again and again; nothing acknowledged or owned is lost."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crashloop import WEIGHTS, CrashLoop, CrashLoopConfig, Report
from tests.serverproc import database_url_for, drop_database_of

# A fixed seed keeps failures reproducible; CRASH_LOOP_SEED=<n> explores other schedules.
SEED = int(os.environ.get("CRASH_LOOP_SEED", "8008"))


async def _crash_loop(tmp_path: Path, import_root: Path, kills: int) -> Report:
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
    # path fulfils and moves mid-flight (the operations a crash can destroy).
    for kind in WEIGHTS:
        assert report.count(kind, "acked") > 0, f"no {kind} was acknowledged"
    caught = sum(report.count(k, "in doubt") for k in ("path_fulfil", "register_move"))
    assert caught >= kills // 4, f"only {caught} moves were in flight at a kill"
    return report


@pytest.mark.slow
async def test_crash_loop_hardlink_path(tmp_path: Path, import_root: Path) -> None:
    """Import root and storage on one filesystem: moves can be links/renames."""
    assert import_root.stat().st_dev == tmp_path.stat().st_dev
    await _crash_loop(tmp_path, import_root, kills=32)


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
    await _crash_loop(tmp_path, tmpfs_import_root, kills=12)
