"""An orchestrator and a worker on the client wheel alone, run by tests/e2e/test_python_wheel.py.

Runs in a clean venv where only the asset-service-client wheel (and its dependencies) is
installed, and learns where and how to connect from ASSET_SERVICE_* variables. It talks
with the test on stdin/stdout, one word a line, so that the test can stop and restart the
server in the middle of a watch; its last line is "RESULT <json>" for the test to check.

    python -I wheel_scenario.py WORKDIR
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from asset_client import (
    AssetClient,
    AssetType,
    AsyncAssetClient,
    UnavailableError,
    Value,
    WatchEvent,
)

WAIT = 60.0  # the most any step waits for the test or for the server


def say(word: str) -> None:
    print(word, flush=True)


def expect(word: str) -> None:
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} from the test, got {line!r}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Resumptions(logging.Handler):
    """Counts the client's "resuming" log records: a watch re-opened after a cut."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "resuming" in record.getMessage():
            self.count += 1


class Watching(threading.Thread):
    """The events of one watch, collected in a thread until the watch ends."""

    def __init__(self, client: AssetClient, asset_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.client, self.asset_ids = client, asset_ids
        self.events: list[WatchEvent] = []
        self.error: BaseException | None = None
        self.first = threading.Event()

    def run(self) -> None:
        try:
            for event in self.client.watch(self.asset_ids, timeout=2 * WAIT):
                self.events.append(event)
                self.first.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first.set()

    def brief(self) -> list[list[str]]:
        return [[e.type.value, e.asset.id, e.asset.status.value] for e in self.events]


def promise_to_read(work: Path, orchestrator: AssetClient) -> dict[str, Any]:
    """promise -> watch -> a worker uploads and fulfills -> manifest -> read, sha256 checked."""
    for folder in ("in", "back"):
        (work / folder).mkdir()
    source = work / "video.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    video = orchestrator.upload(source, media_type="video/mp4", progress=False)
    frames = orchestrator.create_pending("task-1", "frames.bin", lease_seconds=30)
    note = orchestrator.create_pending("task-1", "note.json", type=AssetType.VALUE)
    token = orchestrator.mint_task_token("task-1", [video.id])
    watch = Watching(orchestrator, [frames.id, note.id])
    watch.start()
    watch.first.wait(WAIT)

    # The worker: the task token it is given wins over ASSET_SERVICE_TOKEN_FILE.
    with AssetClient(token=token.token) as worker:
        inputs = worker.manifest({"video": video.id}, wait=True, timeout=WAIT)
        local = worker.download(video.id, work / "in" / "video.bin", progress=False)
        produced = work / "frames.bin"
        produced.write_bytes(local.read_bytes()[::-1])
        with worker.keep_lease(frames.id, every=0.2) as lease:
            time.sleep(0.5)  # "work" for longer than one renewal
            uploaded = worker.upload(produced, pending_asset_id=frames.id, progress=False)
        worker.fulfill(note.id, value=Value.of_json({"frames": uploaded.size_bytes}))

    watch.join(WAIT)
    outputs = orchestrator.manifest({"frames": frames.id, "note": note.id})
    back = orchestrator.download(frames.id, work / "back" / "frames.bin", progress=False)
    return {
        "input_sha256": [sha256(local), sha256(source), video.sha256],
        "input_manifest_keys": sorted(inputs.entries),
        "renewals": lease.renewals,
        "lease_lost": None if lease.lost is None else str(lease.lost),
        "uploaded": [uploaded.id, uploaded.status.value, uploaded.sha256, sha256(produced)],
        "watch": watch.brief(),
        "watch_error": None if watch.error is None else repr(watch.error),
        "output_manifest_keys": sorted(outputs.entries),
        "read_back_sha256": sha256(back),
        "ids": {"frames": frames.id, "note": note.id, "video": video.id},
    }


def restart_mid_watch(orchestrator: AssetClient, video_id: str) -> dict[str, Any]:
    """The test stops the server while a watch is open and a safe call is on its way."""
    resumptions = Resumptions()
    logging.getLogger("asset_client").addHandler(resumptions)
    logging.getLogger("asset_client").setLevel(logging.INFO)
    late = orchestrator.create_pending("task-2", "late.txt", type=AssetType.VALUE)
    watch = Watching(orchestrator, [late.id])
    watch.start()
    watch.first.wait(WAIT)
    say("WATCHING")
    expect("DOWN")

    # Without the channel's retries the same call fails at once while the server is down.
    with AssetClient(options=[("grpc.enable_retries", 0)]) as plain:
        started = time.monotonic()
        try:
            plain.get(video_id)
            without: list[Any] = ["answered", time.monotonic() - started]
        except UnavailableError:
            without = ["UNAVAILABLE", time.monotonic() - started]

    got: dict[str, Any] = {}
    got_async: dict[str, Any] = {}

    def get() -> None:
        started = time.monotonic()
        try:
            got["asset"] = orchestrator.get(video_id).id  # the client's default deadline
        except Exception as exc:
            got["error"] = repr(exc)
        got["seconds"] = time.monotonic() - started

    async def get_async() -> None:  # the asyncio client's channel has the same retries
        started = time.monotonic()
        try:
            async with AsyncAssetClient() as client:
                got_async["asset"] = (await client.get(video_id)).id
        except Exception as exc:
            got_async["error"] = repr(exc)
        got_async["seconds"] = time.monotonic() - started

    calls = [
        threading.Thread(target=get, daemon=True),
        threading.Thread(target=asyncio.run, args=(get_async(),), daemon=True),
    ]
    for call in calls:
        call.start()
    say("CALLED")
    expect("UP")
    for call in calls:
        call.join(WAIT)
    fulfilled = orchestrator.fulfill(late.id, value="late but here")
    watch.join(WAIT)
    return {
        "without_retries": without,
        "get": got,
        "get_async": got_async,
        "fulfilled_revision": fulfilled.revision,
        "watch": watch.brief(),
        "watch_value": None if not watch.events else str(watch.events[-1].asset.value),
        "watch_error": None if watch.error is None else repr(watch.error),
        "watch_ended": not watch.is_alive(),
        "resumptions": resumptions.count,
        "late": late.id,
    }


def main() -> int:
    work = Path(sys.argv[1])
    result: dict[str, Any] = {
        # The server package is not importable here: the wheel stands alone.
        "asset_service_importable": importlib.util.find_spec("asset_service") is not None,
    }
    with AssetClient() as orchestrator:  # address, TLS files, token: ASSET_SERVICE_*
        result["target"] = orchestrator.target
        result["timeout"] = orchestrator.timeout
        result["scenario"] = promise_to_read(work, orchestrator)
        result["restart"] = restart_mid_watch(orchestrator, result["scenario"]["ids"]["video"])
    say("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
