"""/metrics of a real server after a scripted workload: every counter and histogram moved by
what the workload did, and every alert rule and dashboard query names a metric it exports."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import upload
from tests.e2e.promql import metric_names
from tests.e2e.scrape import Samples, metrics_port, rpc, scrape
from tests.serverproc import ServerProcess, database_url_for, serving

ROOT = Path(__file__).resolve().parents[2]
SIZES = (3000, 70000)  # the second in three chunks
CHUNK = 32768
GETS = 5
MISSING = "00000000-0000-4000-8000-000000000000"


@dataclass
class Workload:
    before: Samples
    watching: Samples  # while one WatchAsset stream was open
    after: Samples
    started_at: float

    def delta(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.after.total(name, labels) - self.before.total(name, labels)


async def watch_until_done(stub: pb_grpc.AssetServiceStub, asset_id: str) -> list[int]:
    return [
        event.type
        async for event in stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[asset_id]), timeout=30)
    ]


async def run_workload(server: ServerProcess, port: int) -> Workload:
    started_at = time.time()
    before = scrape(port)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.AssetServiceStub(channel)
        value = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="v", media_type="text/plain", value=pb.Value(text="x"))
        )
        for _ in range(GETS):
            await stub.GetAsset(pb.GetAssetRequest(asset_id=value.asset.id))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetAsset(pb.GetAssetRequest(asset_id=MISSING))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        files = []
        for size in SIZES:
            chunks = [bytes([size % 251]) * min(CHUNK, size - at) for at in range(0, size, CHUNK)]
            files.append(await upload(stub, chunks, label="f.bin", media_type="x/y"))
        read = 0
        async for response in stub.ReadAsset(pb.ReadAssetRequest(asset_id=files[1].id)):
            read += len(response.chunk)
        assert read == SIZES[1]

        # A watch open, then closed by the fulfilment that ends it.
        promise = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label="p", type=pb.ASSET_TYPE_VALUE)
        )
        events: list[int] = []
        opened = asyncio.Event()

        async def follow() -> None:
            request = pb.WatchAssetRequest(asset_ids=[promise.asset.id])
            async for event in stub.WatchAsset(request, timeout=30):
                events.append(event.type)
                opened.set()

        watcher = asyncio.create_task(follow())
        await asyncio.wait_for(opened.wait(), 10)
        watching = scrape(port)
        await stub.FulfillAsset(
            pb.FulfillAssetRequest(asset_id=promise.asset.id, value=pb.Value(text="done"))
        )
        await asyncio.wait_for(watcher, 10)
        assert events == [pb.WATCH_EVENT_TYPE_SNAPSHOT, pb.WATCH_EVENT_TYPE_CHANGED]

        # A promise whose lease runs out: the sweep fails it (watched until then).
        leased = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(
                task_id="t", label="l", type=pb.ASSET_TYPE_VALUE, lease_seconds=1
            )
        )
        assert await watch_until_done(stub, leased.asset.id) == [
            pb.WATCH_EVENT_TYPE_SNAPSHOT,
            pb.WATCH_EVENT_TYPE_CHANGED,
        ]
        scrubbed = [r async for r in stub.ScrubAssets(pb.ScrubAssetsRequest(), timeout=30)]
        assert len(scrubbed) == len(SIZES)

    # Counted every 0.2 s here: wait for a count that saw the whole workload.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(port)
        if after.get("asset_service_assets", {"status": "FAILED"}) == 1:
            break
        assert time.monotonic() < deadline, after.text
        await asyncio.sleep(0.1)
    return Workload(before, watching, after, started_at)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    tmp = tmp_path_factory.mktemp("metrics")
    url = database_url_for(tmp)
    flags = ["--metrics-listen", "127.0.0.1:0", "--lease-check-interval", "0.2"]
    flags += ["--metrics-count-interval", "0.2"]
    with serving(ServerProcess(tmp / "data", url, extra_args=flags)) as server:
        yield asyncio.run(run_workload(server, metrics_port(server)))


def test_calls_are_counted_by_method_and_code(workload: Workload) -> None:
    d = workload.delta
    assert d("grpc_server_started_total", rpc("GetAsset")) == GETS + 1
    assert d("grpc_server_handled_total", rpc("GetAsset", "OK")) == GETS
    assert d("grpc_server_handled_total", rpc("GetAsset", "NotFound")) == 1
    assert d("grpc_server_handling_seconds_count", rpc("GetAsset")) == GETS + 1
    assert d("grpc_server_handling_seconds_bucket", {**rpc("GetAsset"), "le": "+Inf"}) == GETS + 1
    assert d("grpc_server_msg_received_total", rpc("GetAsset")) == GETS + 1
    assert d("grpc_server_msg_sent_total", rpc("GetAsset")) == GETS  # NOT_FOUND sends none
    assert d("grpc_server_handled_total", rpc("UploadAsset", "OK", "client_stream")) == 2
    uploads = rpc("UploadAsset", kind="client_stream")
    assert d("grpc_server_msg_received_total", uploads) == 2 + 1 + 3  # headers and chunks
    assert d("grpc_server_handled_total", rpc("ReadAsset", "OK", "server_stream")) == 1
    assert d("grpc_server_handled_total", rpc("WatchAsset", "OK", "server_stream")) == 2
    assert d("grpc_server_handled_total", rpc("ScrubAssets", "OK", "server_stream")) == 1
    assert workload.after.total("asset_service_rpcs_in_flight") == 0
    assert (
        workload.watching.get(
            "asset_service_rpcs_in_flight",
            {"grpc_service": "asset.v1.AssetService", "grpc_method": "WatchAsset"},
        )
        == 1
    )


def test_bytes_up_and_down(workload: Workload) -> None:
    d = workload.delta
    assert d("asset_service_upload_bytes_total") == sum(SIZES)
    assert d("asset_service_read_bytes_total") == SIZES[1]
    received = d("asset_service_rpc_received_bytes_total", {"grpc_method": "UploadAsset"})
    assert sum(SIZES) < received < sum(SIZES) + 200  # the chunks, their framing, two headers
    sent = d("asset_service_rpc_sent_bytes_total", {"grpc_method": "ReadAsset"})
    assert SIZES[1] < sent < SIZES[1] + 50


def test_watch_streams_open_close_and_their_lag(workload: Workload) -> None:
    assert workload.before.get("asset_service_watch_streams", {"watch": "ids"}) == 0
    assert workload.watching.get("asset_service_watch_streams", {"watch": "ids"}) == 1
    assert workload.after.get("asset_service_watch_streams", {"watch": "ids"}) == 0
    d = workload.delta
    assert d("asset_service_watch_events_sent_total", {"type": "SNAPSHOT"}) == 2
    assert d("asset_service_watch_events_sent_total", {"type": "CHANGED"}) == 2
    # One per CHANGED event: the fulfilment and the lease's expiry, seen and sent here.
    assert d("asset_service_watch_event_lag_seconds_count") == 2
    assert 0 < d("asset_service_watch_event_lag_seconds_sum") < 5


def test_store_writes_feed_and_leases(workload: Workload) -> None:
    d = workload.delta
    writes = 1 + len(SIZES) + 2 + 1 + 1  # value, uploads, two promises, fulfil, expiry
    assert d("asset_service_group_commit_writes_sum") == writes
    assert 1 <= d("asset_service_group_commit_writes_count") <= writes
    assert d("asset_service_change_feed_lag_seconds_count") == writes
    assert workload.after.get("asset_service_change_feed_revision") >= writes
    assert d("asset_service_leases_expired_total") == 1
    gets = d("asset_service_store_operation_seconds_count", {"operation": "get", "outcome": "ok"})
    assert gets >= GETS + 1
    assert d("asset_service_storage_operation_seconds_count", {"operation": "remove"}) == 0
    assert workload.after.get("asset_service_assets", {"status": "AVAILABLE"}) == 4
    assert workload.after.get("asset_service_assets", {"status": "PENDING"}) == 0
    assert workload.after.get("asset_service_assets_counted_timestamp_seconds") > (
        workload.started_at
    )


def test_scrub_progress_and_verdict(workload: Workload) -> None:
    d = workload.delta
    assert d("asset_service_scrub_checked_assets_total") == len(SIZES)
    assert d("asset_service_scrub_checked_bytes_total") == sum(SIZES)
    assert d("asset_service_scrub_corrupt_found_total") == 0
    after = workload.after
    assert after.get("asset_service_scrub_running") == 0
    assert after.get("asset_service_scrub_corrupt_assets") == 0
    ended = after.get("asset_service_scrub_last_pass_end_timestamp_seconds")
    assert workload.started_at < ended < time.time()


def test_state_and_build(workload: Workload) -> None:
    after = workload.after
    assert after.get("asset_service_ready") == 1
    assert after.get("asset_service_uploads_in_progress") == 0
    assert after.get("asset_service_uploads_limit") == 64
    assert after.get("asset_service_reads_limit") == 128
    builds = [labels for (name, labels) in after.values if name == "asset_service_build_info"]
    assert len(builds) == 1 and dict(builds[0])["version"], builds
    assert after.get("process_resident_memory_bytes") > 0


def test_every_alert_names_an_exported_metric(workload: Workload) -> None:
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    exprs = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 8
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
    exported = workload.after.names | PROMETHEUS_OWN
    for alert, expr in exprs:
        names = metric_names(expr)
        assert names, f"{alert}: {expr} names no metric"
        assert names <= exported, f"{alert} names {sorted(names - exported)}, not exported"


def test_every_dashboard_panel_names_an_exported_metric(workload: Workload) -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 10
    exported = workload.after.names | PROMETHEUS_OWN
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} names no metric"
            missing = names - exported
            assert not missing, f"{panel['title']} names {sorted(missing)}, not exported"


# What Prometheus itself records about every scrape target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}


def test_a_busy_metrics_port_stops_start_up_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
        flags = ["--storage-root", str(tmp_path), "--metrics-listen", f"127.0.0.1:{port}"]
        done = subprocess.run(
            [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0", *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in last and "--metrics-listen" in last
    assert "Traceback" not in done.stderr and "listening on" not in done.stderr
