"""The `asset` command's documentation and the client's local cache, without a server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest
from asset_client._blobcache import BlobCache
from asset_client._materialize import plain_config
from asset_client.cli import _app, _main

README = Path(__file__).resolve().parents[2] / "README.md"


def _workers_section() -> str:
    text = README.read_text()
    return text[text.index("## Workers\n") : text.index("## Layout\n")]


def test_the_readme_names_every_global_option_with_its_variable() -> None:
    section = _workers_section()
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    for param in _app.cli.params:
        if not isinstance(param, click.Option) or param.envvar is None:
            continue
        (row,) = [r for r in rows if f"`{param.opts[0]}`" in r]
        variable = str(param.envvar)
        short = "…" + variable.removeprefix("ASSET_SERVICE")
        assert variable in row or short in row, (param.opts, row)


def test_the_readme_lists_every_command() -> None:
    section = _workers_section()
    for name in _main.cli.commands:
        assert re.search(rf"`asset {re.escape(name)}\b", section), name


def _blob(cache: BlobCache, content: bytes, mtime: float) -> str:
    import hashlib

    sha = hashlib.sha256(content).hexdigest()
    path = cache.path(sha)
    path.write_bytes(content)
    os.utime(path, (mtime, mtime))
    return sha


def test_eviction_removes_the_least_recently_used_but_not_one_in_use(tmp_path: Path) -> None:
    cache = BlobCache.open(tmp_path, max_bytes=25)
    old = _blob(cache, b"a" * 10, 1000)
    busy = _blob(cache, b"b" * 10, 2000)
    recent = _blob(cache, b"c" * 10, 3000)
    new = _blob(cache, b"d" * 10, 4000)
    dead = cache.blobs / f".{old}.abc.part"  # a download whose process died long ago
    dead.write_bytes(b"x")
    os.utime(dead, (1000, 1000))
    live = cache.blobs / f".{new}.def.part"  # one in progress
    live.write_bytes(b"y")
    lock = cache.try_lock(busy)
    assert lock is not None and cache.try_lock(busy) is None  # another holder waits
    try:
        assert cache.evict(keep=new) == 2
    finally:
        cache.unlock(lock)
    assert sorted(p.name for p in cache.blobs.iterdir()) == sorted([busy, new, live.name])
    assert old not in os.listdir(cache.blobs) and recent not in os.listdir(cache.blobs)


def test_a_cached_blob_of_the_wrong_size_is_not_used(tmp_path: Path) -> None:
    cache = BlobCache.open(tmp_path)
    sha = _blob(cache, b"abc", 1000)
    assert cache.lookup(sha, 3) == cache.path(sha)
    assert cache.path(sha).stat().st_mtime > 1000  # touched: the LRU clock
    assert cache.lookup(sha, 4) is None
    assert not cache.path(sha).exists()
    with pytest.raises(ValueError):
        cache.path("../../etc/passwd")
    assert cache.blobs.stat().st_mode & 0o777 == 0o700


def test_config_params_are_written_as_the_server_writes_them() -> None:
    assert plain_config({"n": 3, "x": 2.0, "y": 0.5, "l": [1.0, {"k": True}], "s": None}) == {
        "n": 3,
        "x": 2,
        "y": 0.5,
        "l": [1, {"k": True}],
        "s": None,
    }
    with pytest.raises(ValueError, match="not JSON"):
        plain_config({"bad": float("nan")})
    with pytest.raises(ValueError, match="set is not JSON"):
        plain_config({"bad": {1, 2}})
