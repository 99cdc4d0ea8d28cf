"""An unexpected failure is logged once, as ERROR with its traceback and the ref the client
was told; the call's access line carries the same ref."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.server import start
from tests.unit.test_tracing import BROKEN, BrokenStore


async def test_the_access_line_carries_the_ref_of_the_one_error_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = load_settings(["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path)], {})
    running = await start(settings, store=BrokenStore())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pb_grpc.AssetServiceStub(channel).GetAsset(
                    pb.GetAssetRequest(asset_id=BROKEN)
                )
        for _ in range(100):  # the line is written once grpc has sent the status
            if any(r.name == "asset_service.access" for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        await running.stop(1)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    told = re.search(r"ref ([0-9a-f]{12})", failed.value.details() or "")
    assert told, failed.value.details()
    ref = told.group(1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert ref in errors[0].getMessage() and errors[0].exc_info is not None
    (access,) = [r for r in caplog.records if r.name == "asset_service.access"]
    assert access.levelno == logging.INFO
    assert access.__dict__["code"] == "INTERNAL" and access.__dict__["ref"] == ref
    assert f"ref={ref}" in access.getMessage()
