"""Every service is added as generic handlers only: grpc.aio's serving loop waits on one
pending request per registered method for every call it accepts (api/registration.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.registration import GenericOnly
from tests.unit.in_process import served_from_memory


async def test_no_method_is_registered_and_every_call_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[str] = []
    real = grpc.aio._server.Server.add_registered_method_handlers

    def spy(self: Any, service: str, handlers: Any) -> None:
        registered.append(service)
        real(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", spy)
    async with served_from_memory(tmp_path) as (running, stub):
        created = await stub.CreateValueAsset(
            pb.CreateValueAssetRequest(label="a", value=pb.Value(json="1"))
        )
        got = await stub.GetAsset(pb.GetAssetRequest(asset_id=created.asset.id))
        assert got.asset.id == created.asset.id
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        async with channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest()
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert registered == []


def test_generic_only_passes_generic_handlers_on() -> None:
    added: list[Any] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            added.append(handlers)

        def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
            raise AssertionError("registered")

    only = GenericOnly(Server())
    only.add_generic_rpc_handlers(("h",))
    only.add_registered_method_handlers("s", {})
    assert added == [("h",)]
