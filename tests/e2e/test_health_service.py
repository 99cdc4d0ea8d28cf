"""End to end: every grpc.health.v1 method reflection lists answers, and says what it knows."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serverproc import ServerProcess

SERVICE = "asset.v1.AssetService"
SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_list_answers_both_probes(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: r.status for name, r in reply.statuses.items()} == {"": SERVING, SERVICE: SERVING}


async def test_check_of_an_unknown_name_says_which_names_there_are(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health.Check(health_pb2.HealthCheckRequest(service="asset.v1.Nope"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    details = raised.value.details() or ""
    assert "'asset.v1.Nope'" in details and f"'{SERVICE}' (readiness)" in details, details
    assert "'' (liveness)" in details, details
