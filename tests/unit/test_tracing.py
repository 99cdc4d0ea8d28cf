"""Traces: one server span per call with the status the client saw, store and storage calls
as its children, with security off (handlers wrapped at registration) and on (grpc's
interceptor chain); the spans go to an in-memory exporter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.config import load_settings
from asset_service.domain.models import Asset
from asset_service.server import start
from asset_service.store.memory import MemoryStore
from asset_service.telemetry import Telemetry
from tests.e2e.security_helpers import bearer, token_for, tokens_toml

SERVICE = "/asset.v1.AssetService/"
BROKEN = "11111111-1111-4111-8111-111111111111"
MISSING = "00000000-0000-4000-8000-000000000000"


class BrokenStore(MemoryStore):
    """get() of BROKEN fails as a bug would: the call ends INTERNAL."""

    async def get(self, asset_id: str) -> Asset | None:
        if asset_id == BROKEN:
            raise RuntimeError("injected fault")
        return await super().get(asset_id)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


def server_spans(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        if span.kind is SpanKind.SERVER:
            found.setdefault(span.name.removeprefix(SERVICE), []).append(span)
    return found


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [
        span.name
        for span in exporter.get_finished_spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def code_of(span: ReadableSpan) -> grpc.StatusCode:
    assert span.attributes is not None
    value = span.attributes["rpc.grpc.status_code"]
    return next(code for code in grpc.StatusCode if code.value[0] == value)


@pytest.mark.parametrize("secured", [False, True], ids=["open", "tokens"])
async def test_a_span_per_call_with_its_status_and_child_spans(
    tmp_path: Path, exporter: InMemorySpanExporter, secured: bool
) -> None:
    args = ["--listen", "127.0.0.1:0", "--storage-root", str(tmp_path / "data")]
    if secured:
        tokens = tmp_path / "tokens.toml"
        tokens.write_text(tokens_toml())
        args += ["--tokens-file", str(tokens)]
    settings = load_settings(args, {})
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry.from_settings(settings, {}, tracer_provider=provider)
    running = await start(settings, store=BrokenStore(), telemetry=telemetry)
    metadata = bearer(token_for("admin")) if secured else ()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = pb_grpc.AssetServiceStub(channel)

            async def chunks() -> AsyncIterator[pb.UploadAssetRequest]:
                yield pb.UploadAssetRequest(header=pb.UploadHeader(label="f", media_type="x/y"))
                yield pb.UploadAssetRequest(chunk=b"z" * 5000)

            uploaded = await stub.UploadAsset(chunks(), metadata=metadata)
            file_id = uploaded.asset.id
            await stub.GetAsset(pb.GetAssetRequest(asset_id=file_id), metadata=metadata)
            read = [
                r
                async for r in stub.ReadAsset(
                    pb.ReadAssetRequest(asset_id=file_id), metadata=metadata
                )
            ]
            assert sum(len(r.chunk) for r in read) == 5000
            watched = stub.WatchAsset(pb.WatchAssetRequest(asset_ids=[file_id]), metadata=metadata)
            assert len([e async for e in watched]) == 1
            promise = await stub.CreatePendingAsset(
                pb.CreatePendingAssetRequest(task_id="t", label="p"), metadata=metadata
            )
            failures = {
                "GetAsset": (pb.GetAssetRequest(asset_id=MISSING), grpc.StatusCode.NOT_FOUND),
                # A rich status (abort_with_status): the blocking input in its details.
                "GetManifest": (
                    pb.GetManifestRequest(asset_mappings={"in": promise.asset.id}),
                    grpc.StatusCode.FAILED_PRECONDITION,
                ),
                "DeleteAsset": (
                    pb.DeleteAssetRequest(asset_id="not-a-uuid"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
            }
            for name, (request, expected) in failures.items():
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await getattr(stub, name)(request, metadata=metadata)
                assert failed.value.code() == expected, (name, failed.value)
            with pytest.raises(grpc.aio.AioRpcError) as broken:
                await stub.GetAsset(pb.GetAssetRequest(asset_id=BROKEN), metadata=metadata)
            assert broken.value.code() == grpc.StatusCode.INTERNAL
            if secured:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ListAssets(pb.ListAssetsRequest())
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=""))
    finally:
        await running.stop(1)

    spans = server_spans(exporter)
    expected_calls = {
        "UploadAsset": [grpc.StatusCode.OK],
        "GetAsset": [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL],
        "ReadAsset": [grpc.StatusCode.OK],
        "WatchAsset": [grpc.StatusCode.OK],
        "CreatePendingAsset": [grpc.StatusCode.OK],
        "GetManifest": [grpc.StatusCode.FAILED_PRECONDITION],
        "DeleteAsset": [grpc.StatusCode.INVALID_ARGUMENT],
    }
    if secured:
        expected_calls["ListAssets"] = [grpc.StatusCode.UNAUTHENTICATED]
    assert {name: [code_of(s) for s in found] for name, found in spans.items()} == expected_calls
    # Health probes are not traced.
    assert not any("Health" in s.name for s in exporter.get_finished_spans())

    ok_get, _, internal = spans["GetAsset"]
    assert ok_get.status.status_code is StatusCode.UNSET
    assert internal.status.status_code is StatusCode.ERROR
    assert "store.get" in children(exporter, ok_get)
    assert "store.get" in children(exporter, internal)
    assert "storage.read" in children(exporter, spans["ReadAsset"][0])
    assert "store.insert" in children(exporter, spans["UploadAsset"][0])
    # Every store and storage span belongs to a call's trace: start-up and the sweeps
    # (store.leases_run_out every --lease-check-interval) make none.
    ids = {
        s.context.span_id: s.context.trace_id for s in exporter.get_finished_spans() if s.context
    }
    for span in exporter.get_finished_spans():
        if span.kind is not SpanKind.SERVER:
            assert span.parent is not None, span.name
            assert span.context is not None
            assert ids[span.parent.span_id] == span.context.trace_id, span.name
