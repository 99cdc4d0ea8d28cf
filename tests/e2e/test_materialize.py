"""materialize(): a manifest on the worker's machine, inputs cached by sha256 (issue 19)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asset_client import (
    AssetClient,
    AssetDeletedError,
    AssetFailedError,
    AssetType,
    AsyncAssetClient,
    DataLossError,
    WaitTimeoutError,
)

from tests.e2e.grpc_proxy import CountingProxy
from tests.e2e.helpers import stored_files
from tests.serverproc import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[CountingProxy]:
    p = CountingProxy(server.address).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def client(proxy: CountingProxy) -> Iterator[AssetClient]:
    with AssetClient(proxy.address, timeout=30) as c:
        yield c


def _materialize(
    address: str, flavour: str, mappings: dict[str, str], dest: Path, cache: Path, **kw: object
) -> object:
    """The same call through the blocking or the asyncio client."""
    if flavour == "sync":
        with AssetClient(address, timeout=30) as c:
            return c.materialize(mappings, dest=dest, cache_dir=cache, **kw)  # type: ignore[arg-type]

    async def run() -> object:
        async with AsyncAssetClient(address, timeout=30) as c:
            return await c.materialize(mappings, dest=dest, cache_dir=cache, **kw)  # type: ignore[arg-type]

    return asyncio.run(run())


FLAVOURS = ["sync", "async"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_local_manifest_is_the_servers_with_local_paths(
    flavour: str, proxy: CountingProxy, client: AssetClient, tmp_path: Path
) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00video" * 1000)
    video = client.upload(tmp_path / "clip.mp4", progress=False)
    text = client.create_value("prompt", text="a cat")
    doc = client.create_value("params", json={"k": [1, 2]})
    raw = client.create_value("seed", data=b"\x01\x02")
    mappings = {"video": video.id, "prompt": text.id, "params": doc.id, "seed": raw.id}
    config = {"fps": 25, "scale": 2.0, "name": "x", "nested": {"n": [1, 2.5]}}
    server_side = client.manifest(mappings, config)
    dest = tmp_path / "task"
    local = _materialize(
        proxy.address, flavour, mappings, dest, tmp_path / "cache", config_params=config
    )
    assert local.path == dest / "input_data.json"  # type: ignore[attr-defined]
    theirs = json.loads(server_side.path.read_text())
    ours = json.loads(local.path.read_text())  # type: ignore[attr-defined]
    assert ours["config_params"] == theirs["config_params"]
    assert ours["config_params"]["scale"] == 2 and isinstance(ours["config_params"]["scale"], int)
    assert ours.keys() == theirs.keys() and ours["inputs"].keys() == theirs["inputs"].keys()
    for key in mappings:
        mine = Path(ours["inputs"][key])
        assert mine == local.entries[key]  # type: ignore[attr-defined]
        assert mine.is_absolute() and mine.is_relative_to(dest)
        assert mine.read_bytes() == Path(theirs["inputs"][key]).read_bytes()
        assert mine.suffix == Path(theirs["inputs"][key]).suffix
    assert local.path.read_text() == json.dumps(ours, indent=2, sort_keys=True) + "\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_pending_inputs_are_waited_for(
    flavour: str, proxy: CountingProxy, client: AssetClient, tmp_path: Path
) -> None:
    later = client.create_pending("task-1", "late.txt", type=AssetType.VALUE)
    timer = threading.Timer(0.5, lambda: client.fulfill(later.id, value="arrived"))
    timer.start()
    began = time.monotonic()
    try:
        local = _materialize(
            proxy.address, flavour, {"late": later.id}, tmp_path / "t", tmp_path / "c", timeout=30
        )
    finally:
        timer.join()
    assert time.monotonic() - began >= 0.5
    assert local.entries["late"].read_text() == "arrived"  # type: ignore[attr-defined]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_failed_deleted_or_late_input_ends_it_naming_the_input(
    flavour: str, proxy: CountingProxy, client: AssetClient, tmp_path: Path
) -> None:
    ok = client.create_value("ok", text="x")
    failed = client.create_pending("task-1", "frames")
    client.fail(failed.id, "ffmpeg crashed")
    with pytest.raises(AssetFailedError, match=r"input 'frames'.*ffmpeg crashed"):
        _materialize(
            proxy.address,
            flavour,
            {"ok": ok.id, "frames": failed.id},
            tmp_path / "a",
            tmp_path / "c",
        )
    doomed = client.create_pending("task-1", "gone")
    threading.Timer(0.3, lambda: client.delete(doomed.id)).start()
    with pytest.raises(AssetDeletedError, match=r"input 'gone'"):
        _materialize(proxy.address, flavour, {"gone": doomed.id}, tmp_path / "b", tmp_path / "c")
    stuck = client.create_pending("task-1", "stuck")
    began = time.monotonic()
    with pytest.raises(WaitTimeoutError, match=stuck.id):
        _materialize(
            proxy.address, flavour, {"stuck": stuck.id}, tmp_path / "d", tmp_path / "c", timeout=1
        )
    assert time.monotonic() - began < 10
    assert not (tmp_path / "d" / "input_data.json").exists()


def test_a_second_task_on_the_machine_downloads_nothing_again(
    proxy: CountingProxy, client: AssetClient, tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(b"z" * (3 * 1024 * 1024 + 7))
    big = client.upload(tmp_path / "big.bin", progress=False)
    cache = tmp_path / "cache"
    first = client.materialize({"big": big.id}, dest=tmp_path / "t1", cache_dir=cache)
    assert proxy.calls["ReadAsset"] == 1
    second = client.materialize({"in": big.id}, dest=tmp_path / "t2", cache_dir=cache)
    assert proxy.calls["ReadAsset"] == 1
    blob = cache / "blobs" / big.sha256
    assert first.entries["big"].stat().st_ino == blob.stat().st_ino  # a link, not a copy
    assert second.entries["in"].read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert blob.stat().st_mode & 0o777 == 0o400
    # A blob of the wrong size (cut by something else) is fetched again.
    blob.chmod(0o600)
    with blob.open("r+b") as fh:
        fh.truncate(10)
    third = client.materialize({"in": big.id}, dest=tmp_path / "t3", cache_dir=cache)
    assert proxy.calls["ReadAsset"] == 2
    assert third.entries["in"].stat().st_size == big.size_bytes


def test_processes_materializing_the_same_input_at_once_download_it_once(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(b"q" * (2 * 1024 * 1024))
    big = client.upload(tmp_path / "big.bin", progress=False)
    # Each read waits 1.5 s at the proxy: the three processes surely overlap.
    slow = CountingProxy(server.address, delays={"ReadAsset": 1.5}).start()
    program = (
        "import sys\n"
        "from asset_client import AssetClient\n"
        "with AssetClient(sys.argv[1]) as c:\n"
        "    m = c.materialize({'big': sys.argv[2]}, dest=sys.argv[3], cache_dir=sys.argv[4])\n"
        "    print(m.entries['big'])\n"
    )
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    program,
                    slow.address,
                    big.id,
                    str(tmp_path / f"task{n}"),
                    str(tmp_path / "cache"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )
            for n in range(3)
        ]
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        slow.stop()
    assert [p.returncode for p in procs] == [0, 0, 0], results
    assert slow.calls["ReadAsset"] == 1
    for out, _ in results:
        assert Path(out.decode().strip()).read_bytes() == (tmp_path / "big.bin").read_bytes()


def test_bytes_that_do_not_match_the_record_are_never_cached(
    server: ServerProcess, client: AssetClient, tmp_path: Path
) -> None:
    (tmp_path / "f.bin").write_bytes(b"A" * 50_000)
    asset = client.upload(tmp_path / "f.bin", progress=False)
    (stored,) = [p for p in stored_files(server.root) if asset.id in str(p)]
    stored.chmod(0o600)
    stored.write_bytes(b"B" * 50_000)
    cache = tmp_path / "cache"
    with pytest.raises(DataLossError):
        client.materialize({"f": asset.id}, dest=tmp_path / "t", cache_dir=cache)
    assert list((cache / "blobs").iterdir()) == []
    assert not (tmp_path / "t" / "input_data.json").exists()
    assert list((tmp_path / "t" / "files").iterdir()) == []
