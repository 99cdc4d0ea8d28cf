"""End to end: garbage is logged in a few lines, a busy port stops start-up, reflection works."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.e2e.test_grpcurl import grpcurl
from tests.serverproc import ServerProcess, database_url_for, drop_database_of

GARBAGE = b"\xff\xff\xff"


def log_until(server: ServerProcess, fragment: str, timeout: float = 15) -> list[str]:
    """The server's log once a line containing `fragment` has been read from it."""
    deadline = time.monotonic() + timeout
    while not any(fragment in line for line in server.log):
        assert time.monotonic() < deadline, f"{fragment!r} never logged:\n{''.join(server.log)}"
        time.sleep(0.05)
    return list(server.log)


async def test_garbage_requests_are_logged_in_a_few_lines_without_tracebacks(
    server: ServerProcess, channel: grpc.aio.Channel
) -> None:
    get_raw = channel.unary_unary(
        "/asset.v1.AssetService/GetAsset", request_serializer=None, response_deserializer=None
    )
    upload_raw = channel.stream_unary(
        "/asset.v1.AssetService/UploadAsset", request_serializer=None, response_deserializer=None
    )
    before = len(server.log)

    async def unary_garbage() -> grpc.StatusCode:
        try:
            await get_raw(GARBAGE, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    async def streamed_garbage() -> grpc.StatusCode:
        async def messages():  # type: ignore[no-untyped-def]
            yield GARBAGE

        try:
            await upload_raw(messages(), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    codes = []
    for _ in range(10):
        codes += await asyncio.gather(*(unary_garbage() for _ in range(50)))
    streamed = await asyncio.gather(*(streamed_garbage() for _ in range(50)))
    # Bytes that are not the message are the client's error, unary or streamed
    # (tests/e2e/test_malformed_requests.py checks every RPC).
    assert len(codes) == 500 and set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert set(streamed) == {grpc.StatusCode.INVALID_ARGUMENT}
    # The server still serves.
    stub = pb_grpc.AssetServiceStub(channel)
    made = await stub.CreateValueAsset(
        pb.CreateValueAssetRequest(label="after", value=pb.Value(text="x"))
    )
    assert made.asset.label == "after"

    assert server.stop() == 0
    logged = log_until(server, "stopped")[before:]
    # The access log has its line per call (--access-log), as for any call; what is
    # limited is everything else: the lines that say what was wrong.
    access = [line for line in logged if "asset_service.access" in line]
    assert sum("INVALID_ARGUMENT" in line for line in access) == len(codes) + len(streamed)
    lines = [line for line in logged if "asset_service.access" not in line]
    garbage_lines = [line for line in lines if "malformed" in line]
    assert "Traceback" not in "".join(logged)
    assert 1 <= len(garbage_lines) <= 5, "".join(lines)
    assert "GetAsset" in garbage_lines[0]
    assert "suppressed" in garbage_lines[-1]
    assert len(lines) <= 10, "".join(lines)


def test_a_second_server_on_a_busy_port_exits_2_and_says_why(
    server: ServerProcess, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    second = ServerProcess(
        other / "data", database_url_for(other), extra_args=["--listen", server.address]
    )
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            second.start()
    finally:
        drop_database_of(second.database_url)
    assert second.proc is not None and second.proc.wait(10) == 2
    message = "".join(second.log)
    assert (
        f"address {server.address} is in use: is another asset-service running? "
        "choose another --listen"
    ) in message, message
    assert "Traceback" not in message
    # The first server was not disturbed, and is the only one on its port.
    health = grpcurl(server, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and '"SERVING"' in health.stdout


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        ("asset.v1.AssetService", r"service AssetService \{"),
        (
            "asset.v1.AssetService.GetManifest",
            r"rpc GetManifest \( \.asset\.v1\.GetManifestRequest",
        ),
        ("asset.v1.Asset", r"string storage_path = 6;"),
        ("asset.v1.AssetStatus", r"ASSET_STATUS_PENDING = 1;"),
        ("asset.v1.Asset.storage_path", r"string storage_path = 6"),
    ],
)
def test_grpcurl_describes_services_methods_messages_and_enums(
    server: ServerProcess, symbol: str, expected: str
) -> None:
    described = grpcurl(server, "describe", symbol)
    assert described.returncode == 0, described.stderr
    assert re.search(expected, described.stdout), described.stdout


def test_grpcurl_reports_an_unknown_method_as_not_found(server: ServerProcess) -> None:
    described = grpcurl(server, "describe", "asset.v1.AssetService.NoSuchMethod")
    assert described.returncode != 0
    assert "not found" in described.stderr.lower(), described.stderr
