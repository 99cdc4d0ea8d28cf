"""OpenTelemetry traces: a server span per call (the standard grpc instrumentation's) and
child spans for store and storage calls, exported as the standard OTEL_* variables say.

Imported only when OTEL_TRACES_EXPORTER names an exporter: otherwise the SDK is never loaded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import filters
from opentelemetry.instrumentation.grpc._aio_server import OpenTelemetryAioServerInterceptor
from opentelemetry.instrumentation.grpc._utilities import _server_status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.semconv._incubating.attributes.rpc_attributes import RPC_GRPC_STATUS_CODE

from asset_service.domain.errors import AssetError
from asset_service.telemetry._calls import Call, Stopping, final_code, keep_shape

SERVICE_NAME = "asset-service"
EXPORTER_GROUP = "opentelemetry_traces_exporter"
# The spec's "otlp" is OTLP over gRPC unless OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says
# otherwise; the gRPC exporter registers itself only under its long name.
_OTLP = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
# Probes every few seconds from every checker would be most of the traces.
UNTRACED_SERVICES = ("grpc.health.v1.Health",)


def provider_from_env(env: Mapping[str, str], version: str) -> TracerProvider:
    """A TracerProvider exporting to every exporter OTEL_TRACES_EXPORTER names, batched
    (OTEL_BSP_*), sampled as OTEL_TRACES_SAMPLER says; AssetError for an unknown name."""
    attributes = {"service.version": version}
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes["service.name"] = SERVICE_NAME
    # The server's stop flushes and shuts it down, bounded; the SDK's own exit hook would
    # wait for an unreachable collector (OTEL_EXPORTER_OTLP_TIMEOUT) after the stop.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    for name in env.get("OTEL_TRACES_EXPORTER", "").split(","):
        name = name.strip().lower()
        if name and name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "otlp":
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
        )
        name = _OTLP.get(protocol.strip(), f"otlp ({protocol})")
    found = metadata.entry_points(group=EXPORTER_GROUP, name=name)
    if not found:
        have = sorted({"otlp", *(e.name for e in metadata.entry_points(group=EXPORTER_GROUP))})
        raise AssetError(
            f"OTEL_TRACES_EXPORTER: no trace exporter {name!r} is installed (installed: "
            f"{', '.join(have)}); use one of those, or none"
        )
    exporter_class = next(iter(found)).load()
    exporter: SpanExporter = exporter_class()
    return exporter


class SpanInterceptor(OpenTelemetryAioServerInterceptor):
    """The standard grpc instrumentation's aio server interceptor (its span name, kind,
    attributes and context propagation), adapted to how this server's handlers are shaped.

    As shipped it breaks here twice: a streaming handler that writes with context.write
    (every AssetService stream, and the security interceptor's wrappers) is a coroutine,
    which its `async for` cannot iterate (TypeError); and a status sent with
    abort_with_status (every error with rich details) bypasses the context proxy it reads
    the status from, so such spans said OK. Here the handler keeps its shape and the span's
    status is the one the call really ended with.
    """

    stopping: Stopping | None = None

    def _intercept_aio_server_unary(self, behavior: Any, details: Any) -> Any:
        return keep_shape(behavior, functools.partial(self._traced, details))

    def _intercept_aio_server_stream(self, behavior: Any, details: Any) -> Any:
        return keep_shape(behavior, functools.partial(self._traced, details))

    @contextlib.contextmanager
    def _traced(self, details: Any, context: Any) -> Iterator[Call]:
        with self._set_remote_context(context), self._span(details, context) as span:
            call = Call(0.0)
            try:
                with call:
                    yield call
            finally:
                _end(span, call, context, self.stopping)

    def _span(self, details: Any, context: Any) -> Any:
        return self._start_span(details, context, set_status_on_exception=False)  # type: ignore[no-untyped-call]


def _end(span: Any, call: Call, context: Any, stopping: Stopping | None) -> None:
    code = final_code(call, context, stopping)
    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    span.set_status(_server_status(code, context.details() or ""))  # type: ignore[no-untyped-call]
    error = call.error
    if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
        span.record_exception(error)


class Tracing:
    """The server's tracer provider, its call interceptor and a tracer for child spans."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = trace.get_tracer("asset_service", tracer_provider=provider)
        grpc_tracer = trace.get_tracer(
            "opentelemetry.instrumentation.grpc",
            tracer_provider=provider,
            schema_url="https://opentelemetry.io/schemas/1.11.0",
        )
        untraced = filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES))
        self.interceptor = SpanInterceptor(grpc_tracer, filter_=filters.negate(untraced))  # type: ignore[no-untyped-call]

    def child_span(self, name: str) -> Any:
        """A span under the current call's, or None outside a call."""
        if not trace.get_current_span().get_span_context().is_valid:
            return None
        return self.tracer.start_as_current_span(name)

    def shutdown(self) -> None:
        """Export what is buffered, then stop (blocking: run it in a thread, bounded)."""
        self.provider.shutdown()
