"""LocalStorage.ping, the readiness probe's storage check: root moved, remounted, or hung."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

import pytest

from asset_service.domain.errors import Unavailable
from asset_service.storage.local import LocalStorage
from tests.tmpfs import unmount


async def test_ping_fails_while_the_root_is_moved_away_and_recovers(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    await storage.open()
    try:
        await storage.ping()
        (tmp_path / "root").rename(tmp_path / "elsewhere")
        with pytest.raises(Unavailable, match=r"storage root .*root is not usable"):
            await storage.ping()
        (tmp_path / "elsewhere").rename(tmp_path / "root")
        await storage.ping()
    finally:
        await storage.close()


async def test_ping_fails_while_another_file_system_covers_the_root(tmp_path: Path) -> None:
    """What a server sees when its disk was unmounted under it (or another mounted over)."""
    root = tmp_path / "root"
    storage = LocalStorage(root)
    await storage.open()
    try:
        await storage.ping()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
        try:
            with pytest.raises(Unavailable, match="now on another file system"):
                await storage.ping()
        finally:
            unmount(root)
        await storage.ping()
    finally:
        await storage.close()


async def test_a_hung_check_is_waited_for_again_never_started_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path / "root")
    await storage.open()
    release, started = threading.Event(), []

    def hung() -> None:  # a stat stuck on a dead NFS server
        started.append(1)
        release.wait(10)

    monkeypatch.setattr(storage, "_ping_sync", hung)
    try:
        for _ in range(3):  # three probes time out while the first check hangs
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await storage.ping()
        assert started == [1]
        release.set()
        async with asyncio.timeout(5):
            await storage.ping()  # the hung one's outcome, then a fresh check
            await storage.ping()
        assert started == [1, 1]
    finally:
        release.set()
        await storage.close()
