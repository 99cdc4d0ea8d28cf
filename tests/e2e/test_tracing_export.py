"""Traces turned on by the standard OTEL_* variables reach an OTLP collector (a fake one
here, the real protocol); an exporter that is not installed stops start-up in one line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.serverproc import ServerProcess


class Collector(otlp_grpc.TraceServiceServicer):
    """Keeps every span it is sent: (service.name, span name, parent span id)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes]] = []

    async def Export(self, request: otlp.ExportTraceServiceRequest, context: Any) -> Any:
        for resource in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        (attributes.get("service.name", ""), span.name, span.parent_span_id)
                    )
        return otlp.ExportTraceServiceResponse()


async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    kept = Collector()
    otlp_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield kept, port
    finally:
        await server.stop(None)


async def test_otel_variables_send_spans_to_an_otlp_collector(tmp_path: Path) -> None:
    async for kept, port in collector():
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_SERVICE_NAME": "assets-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'a.db'}", env=env)
        server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = pb_grpc.AssetServiceStub(channel)
                created = await stub.CreateValueAsset(
                    pb.CreateValueAssetRequest(label="v", value=pb.Value(text="x"))
                )
                await stub.GetAsset(pb.GetAssetRequest(asset_id=created.asset.id))
            deadline = time.monotonic() + 10
            while not any(name.endswith("/GetAsset") for _, name, _ in kept.spans):
                assert time.monotonic() < deadline, kept.spans
                await asyncio.sleep(0.05)
        finally:
            # In a thread: the collector answers the final export from this loop.
            assert await asyncio.to_thread(server.stop) == 0, "".join(server.log)
        names = [name for _, name, _ in kept.spans]
        assert names.count("/asset.v1.AssetService/GetAsset") == 1
        assert names.count("/asset.v1.AssetService/CreateValueAsset") == 1
        assert {service for service, _, _ in kept.spans} == {"assets-test"}
        children = [name for _, name, parent in kept.spans if parent]
        assert "store.get" in children and "store.insert" in children


def test_an_exporter_not_installed_stops_start_up_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSET_SERVICE_", "OTEL_"))}
    env["OTEL_TRACES_EXPORTER"] = "zipkin"
    done = subprocess.run(
        [sys.executable, "-m", "asset_service", "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert "OTEL_TRACES_EXPORTER" in lines[-1] and "'zipkin'" in lines[-1], done.stderr
    assert "otlp" in lines[-1] and "console" in lines[-1], done.stderr
