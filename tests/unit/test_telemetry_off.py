"""Without --metrics-listen and OTEL_TRACES_EXPORTER the server opens no listener but its
own, loads neither prometheus_client nor OpenTelemetry, and wraps nothing: the store is
the store, the change hub calls no hook, the recorder does nothing; with --no-access-log
too, no interceptor runs at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import asyncio, json, sys
import grpc, psutil
from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.server import start

async def main():
    settings = load_settings(sys.argv[1:], {})
    running = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            made = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x")))
            await stub.GetAsset(pb.GetAssetRequest(asset_id=made.asset.id))
        listening = sorted(
            c.laddr.port for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN)
        print(json.dumps({
            "listening": listening,
            "port": running.port,
            "loaded": sorted(m for m in sys.modules
                             if m.split(".")[0] in ("prometheus_client", "opentelemetry")),
            "interceptors": [type(i).__name__ for i in running.telemetry.interceptors],
            "store": type(running.manager.store).__name__,
            "hook": running.manager.hub.on_publish is not None,
            "recorder": running.telemetry.recorder.enabled,
        }))
    finally:
        await running.stop(1)

asyncio.run(main())
"""


def probe(tmp_path: Path, *flags: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_SERVICE_", "OTEL_"))}
    args = ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path / "data"), *flags]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("access_log", [True, False], ids=["access-log", "no-access-log"])
def test_off_by_default_loads_and_wraps_nothing(tmp_path: Path, access_log: bool) -> None:
    seen = probe(tmp_path, *([] if access_log else ["--no-access-log"]))
    assert seen["listening"] == [seen["port"]], "no listener but the gRPC port"
    assert seen["loaded"] == [], "neither prometheus_client nor OpenTelemetry imported"
    assert seen["store"] == "SqliteStore" and seen["hook"] is False
    assert seen["recorder"] is False
    assert seen["interceptors"] == (["CallObserver"] if access_log else [])


def test_metrics_on_is_one_more_listener_and_loads_no_tracing(tmp_path: Path) -> None:
    seen = probe(tmp_path, "--metrics-listen", "127.0.0.1:0")
    assert len(seen["listening"]) == 2  # type: ignore[arg-type]
    assert "prometheus_client" in seen["loaded"]  # type: ignore[operator]
    assert not [m for m in seen["loaded"] if m.startswith("opentelemetry")]  # type: ignore[attr-defined]
    assert seen["store"] == "Observed" and seen["hook"] is True and seen["recorder"] is True
