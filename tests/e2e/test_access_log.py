"""The access log of a real server: one parseable JSON line per call with its method, code,
duration, peer, principal and bytes; every other line JSON too; refusals logged, health
probes only at DEBUG, and nothing with --no-access-log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.helpers import upload
from tests.e2e.security_helpers import SecureFiles, bearer, server_process, token_for
from tests.serverproc import ServerProcess, serving

ACCESS = "asset_service.access"
MISSING = "00000000-0000-4000-8000-000000000000"
FIELDS = {"method", "code", "duration_ms", "peer", "principal", "bytes_in", "bytes_out"}


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line the server wrote to stderr, each of which must be one JSON object."""
    return [json.loads(line) for line in server.log if line.strip()]


def access_lines(server: ServerProcess, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The access lines once there are `count` of them (a line follows its call's end)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in json_lines(server) if line["logger"] == ACCESS]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


async def test_one_json_line_per_call(tmp_path: Path, import_root: Path) -> None:
    with serving(server_process(tmp_path, import_root, ["--log-format", "json"])) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            value = await stub.CreateValueAsset(
                pb.CreateValueAssetRequest(label="v", value=pb.Value(text="hello"))
            )
            await stub.GetAsset(pb.GetAssetRequest(asset_id=value.asset.id))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetAsset(pb.GetAssetRequest(asset_id=MISSING))
            stored = await upload(stub, [b"a" * 1000, b"b" * 2000], label="f", media_type="x/y")
            read = [r async for r in stub.ReadAsset(pb.ReadAssetRequest(asset_id=stored.id))]
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        calls = access_lines(server, 5)
    lines = json_lines(server)  # every line, not only the access lines, parses
    assert any("asset-service listening on" in line["message"] for line in lines)
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
    assert [(c["method"].rsplit("/", 1)[1], c["code"]) for c in calls] == [
        ("CreateValueAsset", "OK"),
        ("GetAsset", "OK"),
        ("GetAsset", "NOT_FOUND"),
        ("UploadAsset", "OK"),
        ("ReadAsset", "OK"),
    ], "one line per call, in order; the health check is not among them at INFO"
    for call in calls:
        assert call.keys() >= FIELDS, call
        assert call["level"] == "INFO"
        assert call["principal"] == "anonymous"
        assert call["peer"].startswith("ipv4:127.0.0.1:"), call
        assert 0 < call["duration_ms"] < 10_000
        assert call["method"] in call["message"] and call["code"] in call["message"]
    missing = calls[2]
    assert MISSING in missing["error"] and missing["bytes_out"] == 0
    assert 3000 < calls[3]["bytes_in"] < 3100  # the chunks and the header
    assert calls[4]["bytes_out"] == sum(r.ByteSize() for r in read)
    assert "ref" not in json.dumps(calls)


async def test_refused_calls_are_logged_with_their_code(tmp_path: Path, import_root: Path) -> None:
    files = SecureFiles(tmp_path).with_tokens()
    with serving(
        server_process(tmp_path, import_root, [*files.args, "--log-format", "json"])
    ) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AssetServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListAssets(pb.ListAssetsRequest())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await stub.DeleteAsset(
                    pb.DeleteAssetRequest(asset_id=MISSING), metadata=bearer(token_for("reader"))
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            await stub.ListAssets(pb.ListAssetsRequest(), metadata=bearer(token_for("reader")))
        calls = access_lines(server, 3)
    assert [(c["code"], c["principal"]) for c in calls] == [
        ("UNAUTHENTICATED", "-"),
        ("PERMISSION_DENIED", "reader-1"),
        ("OK", "reader-1"),
    ]
    assert calls[0]["error"] and calls[1]["error"]


def test_health_checks_at_debug_and_no_lines_when_off(tmp_path: Path) -> None:
    debug = ServerProcess(
        tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}", extra_args=["--log-level", "DEBUG"]
    )
    quiet = ServerProcess(
        tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}", extra_args=["--no-access-log"]
    )
    try:
        for server in (debug.start(), quiet.start()):
            with grpc.insecure_channel(server.address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                pb_grpc.AssetServiceStub(channel).ListAssets(pb.ListAssetsRequest(), timeout=10)
        deadline = time.monotonic() + 10
        while not any("ListAssets OK" in line for line in debug.log):
            assert time.monotonic() < deadline, debug.log
            time.sleep(0.02)
    finally:
        debug.stop()
        quiet.stop()
    health_line = "DEBUG asset_service.access: /grpc.health.v1.Health/Check OK"
    list_line = "INFO asset_service.access: /asset.v1.AssetService/ListAssets OK"
    assert sum(health_line in line for line in debug.log) == 1, debug.log
    assert sum(list_line in line for line in debug.log) == 1, debug.log
    assert not any("asset_service.access" in line for line in quiet.log), quiet.log
