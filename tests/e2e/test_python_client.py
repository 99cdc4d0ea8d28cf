"""End to end: the asset_client package (sync and asyncio) and its worker example, real server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from asset_client import (
    AssetClient,
    AssetDeletedError,
    AssetFailedError,
    AssetServiceError,
    AssetStatus,
    AssetType,
    AsyncAssetClient,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    Value,
    ValueKind,
    WaitTimeoutError,
    WatchEventType,
)
from asset_client._convert import pb

from tests.e2e.helpers import AsyncDriver, RecordingStub
from tests.serverproc import ServerProcess

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "clients" / "python" / "examples" / "worker.py"


def _random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


class _Later:
    """Run fn(*args) after a delay in a thread; join() re-raises what it raised."""

    def __init__(self, delay: float, fn: Any, *args: Any) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            time.sleep(delay)
            try:
                fn(*args)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(15)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


# -- upload / download ---------------------------------------------------------------------


def test_upload_streams_file_and_download_returns_same_bytes(
    client: AssetClient, tmp_path: Path
) -> None:
    src = tmp_path / "clip.bin"
    data = _random_file(src, 2 * 1024 * 1024 + 123)  # three chunks, the last one partial

    asset = client.upload(src, media_type="video/mp4", tags=["raw-upload", "user-5"])

    assert asset.status is AssetStatus.AVAILABLE
    assert asset.type is AssetType.FILE
    assert asset.label == "clip.bin"
    assert asset.media_type == "video/mp4"
    assert asset.tags == ("raw-upload", "user-5")
    assert asset.size_bytes == len(data)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()
    assert asset.create_time.tzinfo is not None

    dest_dir = tmp_path / "out"
    dest_dir.mkdir()
    written = client.download(asset.id, dest_dir / "copy.bin")
    assert written == dest_dir / "copy.bin"
    assert written.read_bytes() == data
    assert sorted(p.name for p in dest_dir.iterdir()) == ["copy.bin"]  # no temp file left


def test_upload_of_empty_file_and_explicit_label(client: AssetClient, tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    asset = client.upload(src, label="Nothing.txt", progress=False)
    assert asset.label == "Nothing.txt"
    assert asset.size_bytes == 0
    assert asset.sha256 == hashlib.sha256(b"").hexdigest()


def test_upload_without_checksum_still_matches(client: AssetClient, tmp_path: Path) -> None:
    src = tmp_path / "x.bin"
    data = _random_file(src, 5000)
    asset = client.upload(src, checksum=False, progress=False)
    assert asset.sha256 == hashlib.sha256(data).hexdigest()


def test_upload_missing_local_file_raises_before_any_call(
    client: AssetClient, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        client.upload(tmp_path / "nope.bin")
    assert list(client.list()) == []


def test_download_failure_leaves_nothing_behind(client: AssetClient, tmp_path: Path) -> None:
    pending = client.create_pending("task-dl", "later.bin")
    dest_dir = tmp_path / "out"
    dest_dir.mkdir()

    with pytest.raises(NotFoundError):
        client.download(str(uuid.uuid4()), dest_dir / "a.bin")
    # It exists (so not NOT_FOUND) but is not readable yet: the server's one answer.
    with pytest.raises(FailedPreconditionError) as info:
        client.download(pending.id, dest_dir / "b.bin")
    assert info.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert f"asset {pending.id} is PENDING; only AVAILABLE assets can be read" in str(info.value)
    assert list(dest_dir.iterdir()) == []


def test_upload_fulfills_pending_asset(client: AssetClient, tmp_path: Path) -> None:
    pending = client.create_pending("task-up", "result.csv", media_type="text/csv")
    src = tmp_path / "whatever-name"
    src.write_text("a,b\n1,2\n")

    asset = client.upload(src, pending_asset_id=pending.id, progress=False)

    assert asset.id == pending.id
    assert asset.status is AssetStatus.AVAILABLE
    assert asset.label == "result.csv"
    assert asset.created_by_task == "task-up"
    assert client.get(pending.id).sha256 == hashlib.sha256(b"a,b\n1,2\n").hexdigest()


# -- values --------------------------------------------------------------------------------


def test_create_value_text_json_and_bytes(client: AssetClient, tmp_path: Path) -> None:
    text = client.create_value("greeting", text="héllo")
    doc = client.create_value("params", json={"threshold": 0.5, "names": ["a"]})
    blob = client.create_value("blob", data=b"\x00\x01\xff")

    assert text.type is AssetType.VALUE
    assert text.value == Value(ValueKind.TEXT, "héllo")
    assert doc.value is not None and doc.value.as_json() == {"threshold": 0.5, "names": ["a"]}
    assert doc.media_type == "application/json"
    assert blob.value == Value(ValueKind.DATA, b"\x00\x01\xff")
    assert client.get(blob.id).value == blob.value
    with pytest.raises(ValueError):
        client.create_value("two", text="a", data=b"b")


# -- typed errors --------------------------------------------------------------------------


def test_errors_are_typed(client: AssetClient, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        client.get("not-a-uuid")
    assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not-a-uuid" in bad.value.details

    missing = str(uuid.uuid4())
    with pytest.raises(NotFoundError) as unknown:
        client.get(missing)
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND
    assert missing in unknown.value.details

    pending = client.create_pending("task-err", "x.bin")
    client.fail(pending.id, "first")
    with pytest.raises(FailedPreconditionError):
        client.fail(pending.id, "second")
    with pytest.raises(FailedPreconditionError):
        client.fulfill(pending.id, value="late")

    outside = tmp_path / "outside.bin"  # tmp_path itself is not an import root
    outside.write_bytes(b"secret")
    other = client.create_pending("task-err", "y.bin")
    with pytest.raises(PermissionDeniedError):
        client.fulfill(other.id, source_path=outside)
    with pytest.raises(ValueError):
        client.fulfill(other.id)  # neither a path nor a value

    assert client.get(pending.id).failure_reason == "first"


def test_upload_refused_early_raises_the_servers_error(client: AssetClient, tmp_path: Path) -> None:
    """The server answers after the header, while the client still has chunks to send."""
    failed = client.create_pending("task-err", "x.bin")
    client.fail(failed.id, "first")
    src = tmp_path / "big.bin"
    _random_file(src, 3 * 1024 * 1024)
    # grpc's asyncio client can still replace the server's status with "INTERNAL: Internal
    # error from Core" when the answer lands while a chunk is in flight (grpc/grpc#36066);
    # AsyncAssetClient narrows that window, it cannot close it. The sync client is exact.
    lost = (InternalError,) if isinstance(client, AsyncDriver) else ()

    with pytest.raises((NotFoundError, *lost)) as unknown:
        client.upload(src, pending_asset_id=str(uuid.uuid4()), progress=False)
    with pytest.raises((FailedPreconditionError, *lost)) as refused:
        client.upload(src, pending_asset_id=failed.id, progress=False)  # it FAILED already

    for info in (unknown, refused):
        if isinstance(info.value, InternalError):
            assert info.value.details == "Internal error from Core"
    assert client.get(failed.id).failure_reason == "first"
    assert [a.id for a in client.list()] == [failed.id]  # nothing stored by either upload


def test_deadline_maps_to_timeout_error(client: AssetClient) -> None:
    pending = client.create_pending("task-deadline", "x.bin")
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        list(client.watch([pending.id], timeout=0.3))
    assert isinstance(info.value, AssetServiceError)
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 5


# -- pending, watch, fulfill ---------------------------------------------------------------


def test_create_pending_watch_then_fulfill_from_path(
    client: AssetClient, import_root: Path
) -> None:
    pending = client.create_pending("task-7", "frames.zip", media_type="application/zip")
    assert pending.status is AssetStatus.PENDING
    assert pending.created_by_task == "task-7"
    assert pending.storage_path == ""
    # Without security every caller is the anonymous principal, and records say so.
    assert (pending.created_by, pending.updated_by) == ("anonymous", "anonymous")

    events = client.watch([pending.id])
    first = next(events)
    assert first.type is WatchEventType.SNAPSHOT
    assert first.asset.status is AssetStatus.PENDING

    produced = import_root / "frames.zip"
    produced.write_bytes(b"zip bytes")
    fulfilled = client.fulfill(pending.id, source_path=produced)
    assert fulfilled.status is AssetStatus.AVAILABLE
    assert not produced.exists()  # moved into the store

    rest = list(events)  # ends by itself: the asset is terminal
    assert [e.type for e in rest] == [WatchEventType.CHANGED]
    assert rest[0].asset.status is AssetStatus.AVAILABLE
    assert rest[0].revision > first.revision
    assert rest[0].asset.sha256 == hashlib.sha256(b"zip bytes").hexdigest()
    assert rest[0].asset.updated_by == "anonymous"


def test_watch_many_assets_delivers_every_transition_in_order(client: AssetClient) -> None:
    a = client.create_pending("task-w", "a.txt", type=AssetType.VALUE)
    b = client.create_pending("task-w", "b.txt", type=AssetType.VALUE)
    later = _Later(0.3, lambda: (client.fulfill(a.id, value="A"), client.fail(b.id, "no b")))

    events = list(client.watch([a.id, b.id], timeout=10))
    later.join()

    snapshots = [e for e in events if e.type is WatchEventType.SNAPSHOT]
    changes = [e for e in events if e.type is WatchEventType.CHANGED]
    assert {e.asset.id for e in snapshots} == {a.id, b.id}
    assert [(e.asset.id, e.asset.status) for e in changes] == [
        (a.id, AssetStatus.AVAILABLE),
        (b.id, AssetStatus.FAILED),
    ]
    assert changes[1].asset.failure_reason == "no b"
    revisions = [e.revision for e in changes]
    assert revisions == sorted(revisions) and len(set(revisions)) == 2


def test_watch_resumes_after_unavailable_from_last_revision(
    client: AssetClient, helper: AssetClient
) -> None:
    """A stream cut by UNAVAILABLE after one event is re-opened from that event's revision."""
    pending = client.create_pending("task-r", "r.txt", type=AssetType.VALUE)
    # The first stream is cut after one event; the change happens while "disconnected".
    stub = RecordingStub(client._stub, [(1, lambda: helper.fulfill(pending.id, value="done"))])
    client._stub = stub  # type: ignore[assignment]
    events = list(client.watch([pending.id], timeout=10))

    requests = stub.watches
    assert len(requests) == 2
    assert requests[0].after_revision == 0
    assert requests[1].after_revision == events[0].revision == pending.revision
    assert events[0].asset.status is AssetStatus.PENDING
    assert events[-1].asset.status is AssetStatus.AVAILABLE
    assert events[-1].revision > events[0].revision
    assert all(e.revision > events[0].revision for e in events[1:])


# -- waiting -------------------------------------------------------------------------------


def test_wait_until_available_returns_assets_in_order(client: AssetClient) -> None:
    ready = client.create_value("ready", text="r")
    pending = client.create_pending("task-wait", "p.txt", type=AssetType.VALUE)
    later = _Later(0.3, client.fulfill, pending.id, None, "value!")

    assets = client.wait_until_available([pending.id, ready.id], timeout=10)
    later.join()

    assert [a.id for a in assets] == [pending.id, ready.id]
    assert all(a.status is AssetStatus.AVAILABLE for a in assets)
    assert assets[0].value == Value(ValueKind.TEXT, "value!")


def test_wait_until_available_raises_naming_the_failed_asset(client: AssetClient) -> None:
    ok = client.create_pending("task-f", "ok.txt", type=AssetType.VALUE)
    bad = client.create_pending("task-f", "bad.txt", type=AssetType.VALUE)
    later = _Later(0.3, client.fail, bad.id, "decoder crashed")

    with pytest.raises(AssetFailedError) as info:
        client.wait_until_available([ok.id, bad.id], timeout=10)
    later.join()

    assert info.value.asset.id == bad.id
    assert info.value.asset.failure_reason == "decoder crashed"
    assert bad.id in str(info.value) and "decoder crashed" in str(info.value)


def test_wait_until_available_raises_when_deleted(client: AssetClient) -> None:
    doomed = client.create_pending("task-d", "d.txt", type=AssetType.VALUE)
    later = _Later(0.3, client.delete, doomed.id)
    with pytest.raises(AssetDeletedError) as info:
        client.wait_until_available([doomed.id], timeout=10)
    later.join()
    assert info.value.asset.id == doomed.id


def test_wait_until_available_times_out(client: AssetClient) -> None:
    ready = client.create_value("ready", text="r")
    never = client.create_pending("task-t", "never.txt")
    start = time.monotonic()

    with pytest.raises(TimeoutError) as info:
        client.wait_until_available([ready.id, never.id], timeout=0.5)

    assert isinstance(info.value, WaitTimeoutError)
    assert info.value.pending == (never.id,)
    assert never.id in str(info.value)
    assert 0.4 < time.monotonic() - start < 5


# -- list, manifest, delete ----------------------------------------------------------------


def test_list_iterates_every_page(client: AssetClient, helper: AssetClient) -> None:
    created = [client.create_value(f"v{i}", text=str(i), tags=["batch-1"]) for i in range(7)]
    client.create_value("other", text="x", tags=["batch-2"])

    # The server really pages at 3 (so the client had to follow tokens).
    first_page = helper._stub.ListAssets(pb.ListAssetsRequest(tags=["batch-1"], page_size=3))
    assert len(first_page.assets) == 3 and first_page.next_page_token

    listed = list(client.list(tags=["batch-1"], page_size=3))
    assert [a.id for a in listed] == [a.id for a in created]
    assert len(list(client.list(page_size=2))) == 8
    assert [a.label for a in client.list(label="other")] == ["other"]
    assert list(client.list(status=AssetStatus.PENDING)) == []


def test_manifest_maps_inputs_to_files(client: AssetClient, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("file input")
    file_asset = client.upload(src, progress=False)
    text_asset = client.create_value("note", text="a note")
    json_asset = client.create_value("cfg", json={"k": 1})

    manifest = client.manifest(
        {"video": file_asset.id, "note": text_asset.id, "cfg": json_asset.id},
        config_params={"threshold": 0.25, "mode": "fast"},
    )

    assert manifest.path.is_absolute() and manifest.path.name == "input_data.json"
    assert set(manifest.entries) == {"video", "note", "cfg"}
    assert manifest.entries["video"].read_text() == "file input"
    assert manifest.entries["note"].read_text() == "a note"
    assert json.loads(manifest.entries["cfg"].read_text()) == {"k": 1}
    written = json.loads(manifest.path.read_text())
    assert written["config_params"] == {"threshold": 0.25, "mode": "fast"}
    assert str(manifest.entries["video"]) in json.dumps(written)


def test_manifest_with_unavailable_input_names_it(client: AssetClient) -> None:
    ready = client.create_value("ready", text="r")
    pending = client.create_pending("task-m", "m.bin")

    with pytest.raises(FailedPreconditionError) as info:
        client.manifest({"a": ready.id, "b": pending.id})

    assert pending.id in info.value.details
    assert [v.subject for v in info.value.violations] == [f"assets/{pending.id}"]
    assert info.value.violations[0].type == "PENDING"


def test_delete_removes_asset(client: AssetClient, tmp_path: Path) -> None:
    src = tmp_path / "gone.bin"
    src.write_bytes(b"bye")
    asset = client.upload(src, progress=False)
    stored = Path(asset.storage_path)
    assert stored.read_bytes() == b"bye"

    last = client.delete(asset.id)

    assert last.id == asset.id
    with pytest.raises(NotFoundError):
        client.get(asset.id)
    assert not stored.exists()


# -- asyncio client ------------------------------------------------------------------------


async def test_async_client_round_trip(server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    data = _random_file(src, 1024 * 1024 + 7)
    async with AsyncAssetClient(server.address, timeout=15) as client:
        asset = await client.upload(src, tags=["async"])
        assert asset.sha256 == hashlib.sha256(data).hexdigest()
        out = await client.download(asset.id, tmp_path / "b.bin")
        assert out.read_bytes() == data

        pending = await client.create_pending("task-async", "o.txt", type=AssetType.VALUE)
        events = client.watch([pending.id])
        first = await anext(events)
        assert first.asset.status is AssetStatus.PENDING
        await client.fulfill(pending.id, value=Value.of_json([1, 2]))
        rest = [e async for e in events]
        assert [e.asset.status for e in rest] == [AssetStatus.AVAILABLE]

        waited = await client.wait_until_available([pending.id, asset.id], timeout=5)
        assert [a.id for a in waited] == [pending.id, asset.id]
        assert [a.id async for a in client.list(tags=["async"], page_size=1)] == [asset.id]

        never = await client.create_pending("task-async", "never.bin")
        with pytest.raises(WaitTimeoutError):
            await client.wait_until_available([never.id], timeout=0.3)
        with pytest.raises(NotFoundError):
            await client.get(str(uuid.uuid4()))


# -- the worker example --------------------------------------------------------------------

UPPERCASE_MODULE = """
import json, sys
manifest = json.load(open(sys.argv[1]))
text = open(manifest["inputs"]["doc"]).read()
suffix = manifest["config_params"]["suffix"]
open(sys.argv[2], "w").write(text.upper() + suffix)
"""


def _worker(
    server: ServerProcess,
    output_id: str,
    command: str,
    *args: str,
    inputs: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The example worker run for one output (and `inputs`, name to asset id)."""
    flags = ["--output", output_id, "--command", command, *args]
    for name, asset_id in (inputs or {}).items():
        flags += ["--input", f"{name}={asset_id}"]
    cache = server.root.parent / "worker-cache"  # materialize's, off the server's folder
    return subprocess.run(
        [sys.executable, str(WORKER), "--server", server.address, "--no-progress", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ASSET_SERVICE_CACHE_DIR": str(cache)},
    )


def test_worker_help_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "--command" in proc.stdout and "{manifest}" in proc.stdout


def test_worker_fulfills_its_output(
    server: ServerProcess, helper: AssetClient, tmp_path: Path
) -> None:
    module = tmp_path / "my_module.py"
    module.write_text(UPPERCASE_MODULE)
    doc = helper.create_pending("task-src", "doc.txt", type=AssetType.VALUE)
    output = helper.create_pending("task-upper", "upper.txt", media_type="text/plain")
    later = _Later(0.5, helper.fulfill, doc.id, None, "hello worker")  # the worker waits for it

    command = f"{sys.executable} {module} {{manifest}} {{output}}"
    config = ("--config", '{"suffix": "!"}', "--wait-timeout", "30")
    proc = _worker(server, output.id, command, *config, inputs={"doc": doc.id})

    later.join()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["asset_id"] == output.id
    done = helper.get(output.id)
    assert done.status is AssetStatus.AVAILABLE
    assert done.label == "upper.txt"
    helper.download(output.id, tmp_path / "result.txt", progress=False)
    assert (tmp_path / "result.txt").read_text() == "HELLO WORKER!"


def test_worker_gives_its_command_local_copies_never_the_servers_paths(
    server: ServerProcess, helper: AssetClient, tmp_path: Path
) -> None:
    # A worker on another machine cannot open a path on the server's disk.
    video = helper.upload(_write(tmp_path / "video.bin", b"frames"), progress=False)
    seen = tmp_path / "seen.json"
    module = tmp_path / "dump.py"
    module.write_text(
        "import json, shutil, sys\n"
        "m = json.load(open(sys.argv[1]))\n"
        f"json.dump({{'manifest': sys.argv[1], **m}}, open({str(seen)!r}, 'w'))\n"
        "shutil.copy(m['inputs']['video'], sys.argv[2])\n"
    )
    output = helper.create_pending("task-local", "copy.bin")
    command = f"{sys.executable} {module} {{manifest}} {{output}}"
    proc = _worker(server, output.id, command, "--config", '{"n": 1}', inputs={"video": video.id})
    assert proc.returncode == 0, proc.stderr
    given = json.loads(seen.read_text())
    server_root = str(server.root.resolve())
    assert not given["manifest"].startswith(server_root), given
    assert not given["inputs"]["video"].startswith(server_root), given
    assert given["config_params"] == {"n": 1}
    assert b"".join(helper.read(output.id)) == b"frames"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_worker_keeps_a_leased_output_alive_while_its_command_runs(
    server: ServerProcess, helper: AssetClient, tmp_path: Path
) -> None:
    """A 1-second lease and a command that runs 3 seconds after it starts: without
    keep_lease the server (sweeping every second) would fail the output long before the
    upload. Until the command has started the test keeps the lease itself, so a worker slow
    to start on a loaded machine is not what is tested."""
    started = tmp_path / "started"
    slow = tmp_path / "slow.py"
    slow.write_text(
        "import sys, time\n"
        f"open({str(started)!r}, 'w').close()\n"
        "time.sleep(3)\n"
        "open(sys.argv[1], 'w').write('late')\n"
    )
    output = helper.create_pending("task-slow", "slow.txt", lease_seconds=1)
    done: list[subprocess.CompletedProcess[str]] = []
    worker = threading.Thread(
        target=lambda: done.append(
            _worker(server, output.id, f"{sys.executable} {slow} {{output}}")
        )
    )
    with helper.keep_lease(output.id):
        worker.start()
        deadline = time.monotonic() + 60
        while not started.exists() and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert started.exists(), "the worker never ran its command"
    worker.join(90)
    (proc,) = done
    assert proc.returncode == 0, proc.stderr
    after = helper.get(output.id)
    assert after.status is AssetStatus.AVAILABLE and after.size_bytes == 4
    assert after.lease_expires_at is not None and after.lease_expires_at > output.lease_expires_at  # type: ignore[operator]


def test_worker_fails_its_output_with_the_command_error(
    server: ServerProcess, helper: AssetClient
) -> None:
    doc = helper.create_value("doc", text="x")
    output = helper.create_pending("task-crash", "out.bin")
    crash = "import sys; sys.stderr.write('Traceback: ValueError: bad frame 42\\n'); sys.exit(3)"

    command = f'{sys.executable} -c "{crash}" {{manifest}}'
    proc = _worker(server, output.id, command, inputs={"doc": doc.id})

    assert proc.returncode == 1
    failed = helper.get(output.id)
    assert failed.status is AssetStatus.FAILED
    assert "status 3" in failed.failure_reason
    assert "ValueError: bad frame 42" in failed.failure_reason


def test_worker_fails_its_output_when_an_input_failed(
    server: ServerProcess, helper: AssetClient
) -> None:
    upstream = helper.create_pending("task-up", "in.bin")
    helper.fail(upstream.id, "upstream exploded")
    output = helper.create_pending("task-down", "out.bin")

    proc = _worker(server, output.id, "true {manifest}", inputs={"video": upstream.id})

    assert proc.returncode == 1
    failed = helper.get(output.id)
    assert failed.status is AssetStatus.FAILED
    assert upstream.id in failed.failure_reason
    assert "upstream exploded" in failed.failure_reason
