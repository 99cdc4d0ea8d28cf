"""Without security and tracing the call observer wraps each handler where it is registered
(grpc then runs no interceptor per call); with either it stays first in the interceptor
chain. Every call of every service is observed both ways."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.server import start
from asset_service.telemetry import Telemetry
from asset_service.telemetry._calls import CallObserver
from tests.e2e.helpers import upload

MISSING = "00000000-0000-4000-8000-000000000000"


def test_alone_the_observer_moves_to_registration() -> None:
    observer = CallObserver(None, True)
    alone = Telemetry(access_log=True, observer=observer)
    assert alone.chain(more=False) == ([], observer)
    assert alone.chain(more=True) == ([observer], None), "security follows: it stays first"
    span = object()
    traced = Telemetry(
        access_log=True, observer=observer, tracing=SimpleNamespace(interceptor=span)
    )
    assert traced.chain(more=False) == ([span, observer], None)
    assert Telemetry().chain(more=False) == ([], None)


async def test_every_service_is_observed_from_registration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asset_service.access")
    settings = load_settings(["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path)], {})
    running = await start(settings)
    try:
        assert running.telemetry.observer is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetAsset(pb.GetAssetRequest(asset_id=MISSING))
            await upload(stub, [b"a" * 1000, b"b" * 2000], label="f")
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            assert [r async for r in listing]
        for _ in range(200):  # each line follows its call's end
            if len([r for r in caplog.records if r.name == "asset_service.access"]) >= 4:
                break
            await asyncio.sleep(0.01)
    finally:
        await running.stop(1)
    lines = {
        r.__dict__["method"].rsplit("/", 1)[1]: r
        for r in caplog.records
        if r.name == "asset_service.access"
    }
    assert lines.keys() == {"GetAsset", "UploadAsset", "Check", "ServerReflectionInfo"}
    assert lines["GetAsset"].__dict__["code"] == "NOT_FOUND"
    assert lines["GetAsset"].__dict__["bytes_in"] > len(MISSING)
    assert 3000 < lines["UploadAsset"].__dict__["bytes_in"] < 3100, "every message counted"
    assert lines["UploadAsset"].__dict__["bytes_out"] > 0
    assert lines["Check"].levelno == logging.DEBUG
    assert all(0 < r.__dict__["duration_ms"] < 10_000 for r in lines.values())
