"""The FileCache's sweep: cut downloads, copies unused too long, and the byte budget."""

from __future__ import annotations

import os
import time
from pathlib import Path

from asset_service.storage.file_cache import STALE_PART_SECONDS, FileCache


def put(folder: Path, name: str, size: int, age: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    when = time.time() - age
    os.utime(path, (when, when))
    return path


def test_the_sweep_goes_by_age_then_budget_oldest_first_bounded(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, storage=None, max_bytes=250)  # type: ignore[arg-type]
    cut = put(tmp_path, f"{'a' * 64}.0123.part", 10, STALE_PART_SECONDS + 5)
    live_part = put(tmp_path, f"{'a' * 64}.4567.part", 10, 5)  # a download under way
    unused = put(tmp_path, "b" * 64, 100, 120)
    oldest_kept = put(tmp_path, "c" * 64, 100, 50)
    middle = put(tmp_path, "d" * 64, 100, 40)
    newest = put(tmp_path, "e" * 64, 100, 30)
    assert cache.sweep(60, limit=2) == 2
    assert not cut.exists() and not unused.exists()
    # 300 bytes left, over the 250 budget: the least recently used goes.
    assert cache.sweep(60, limit=2) == 1
    assert not oldest_kept.exists()
    assert middle.exists() and newest.exists() and live_part.exists()
    assert cache.sweep(60) == 0
    assert cache.sweep(0) == 0, "0: nothing goes by age"
