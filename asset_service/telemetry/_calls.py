"""Every call observed once: its status code, duration, peer, principal and bytes, for metrics
and the access log (an interceptor, first in the chain so that refused calls count too)."""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from asset_service import logs
from asset_service.security.principal import principal_of_call

ACCESS_LOGGER = "asset_service.access"
access_log = logging.getLogger(ACCESS_LOGGER)
ACCESS_FORMAT = "%s %s %.1fms peer=%s principal=%s in=%dB out=%dB%s"

# Health probes come every few seconds from every checker: at INFO they would be most of
# the log. They are counted like every call; their lines are there at --log-level DEBUG.
QUIET_SERVICES = frozenset({"grpc.health.v1.Health"})


class MethodMetrics(Protocol):
    """One method's metrics (telemetry/_metrics.py), looked up once per method."""

    def started(self) -> None: ...

    def finished(self, call: Call, code: grpc.StatusCode, seconds: float) -> None: ...


@dataclass(slots=True)
class Method:
    """What is known of a method before any call: its names and its metrics."""

    path: str  # /asset.v1.AssetService/GetAsset
    service: str
    name: str
    grpc_type: str  # unary, client_stream, server_stream, bidi_stream (go-grpc-prometheus)
    metrics: MethodMetrics | None
    level: int


@dataclass(slots=True)
class Call:
    """One call as it runs: filled in by the wrapped (de)serializers and behavior."""

    start: float
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    peer: str = ""
    principal: str = ""
    ref: str = ""  # the reference of an INTERNAL error, as the client was told it
    error: BaseException | None = field(default=None, repr=False)

    def __enter__(self) -> Call:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        """What the call's behavior raised (a cancellation too) is its error; raised on."""
        if error is not None:
            self.error = error


@dataclass(slots=True)
class Stopping:
    """Set once the server's stop ends the calls still running (its grace over): grpc then
    sends their clients UNAVAILABLE ("Cancelling all calls"), not CANCELLED, and that is
    what their access lines, metrics and spans say (a client's own cancel stays CANCELLED).
    """

    now: bool = False


# The call being served in this task (grpc runs each call in a task of its own, the
# interceptors and the (de)serializers included).
_current: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "asset_service_call", default=None
)


def note_error_ref(ref: str) -> None:
    """The current call failed unexpectedly; its access line carries `ref` (what the
    client was told, and what the ERROR line with the traceback names)."""
    call = _current.get()
    if call is not None:
        call.ref = ref


def _grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


def final_code(call: Call, context: Any, stopping: Stopping | None = None) -> grpc.StatusCode:
    """The status the call ended with: what an abort or set_code chose, else what grpc
    sends for the way the handler ended."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if call.error is None:
        return grpc.StatusCode.OK
    if isinstance(call.error, BaseException) and not isinstance(call.error, Exception):
        # Cancelled: by the client, by the server's stop, or by the deadline.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        if stopping is not None and stopping.now:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class MetricsFactory(Protocol):
    def method(self, service: str, name: str, grpc_type: str) -> MethodMetrics: ...


class CallObserver(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler so that each call is seen once, start to status.

    The wrapped handler is reused while the inner chain hands out the same handler for a
    method (always, without security); each call then costs a Call object, a context
    variable, a clock read and a done callback. The call's end is taken from grpc's done
    callback: after a unary response was serialized and the status sent.
    """

    def __init__(
        self, metrics: MetricsFactory | None, access: bool, stopping: Stopping | None = None
    ) -> None:
        self.metrics = metrics
        self.access = access
        self.stopping = stopping or Stopping()
        self._methods: dict[str, Method] = {}
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        _current.set(Call(time.perf_counter()))
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self.handler(handler_call_details.method, handler)

    def handler(self, path: str, handler: Any) -> Any:
        """`handler` of method `path` as observed (the same object while `handler` is)."""
        cached = self._wrapped.get(path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        grpc_type = _grpc_type(handler.request_streaming, handler.response_streaming)
        wrapped = self._wrap(self._method(path, grpc_type), handler)
        self._wrapped[path] = (handler, wrapped)
        return wrapped

    def registering(self, server: Any) -> Registering:
        """`server` as seen by the code adding services: each handler added is observed,
        wrapped once here, and the server needs no interceptor for it (server.py)."""
        return Registering(server, self)

    def prepare(self, service: Any) -> None:
        """Look up the metrics of every method of `service` (a ServiceDescriptor) now."""
        for m in service.methods:
            grpc_type = _grpc_type(m.client_streaming, m.server_streaming)
            self._method(f"/{service.full_name}/{m.name}", grpc_type)

    def _method(self, path: str, grpc_type: str) -> Method:
        method = self._methods.get(path)
        if method is None:
            service, _, name = path.lstrip("/").rpartition("/")
            metrics = self.metrics.method(service, name, grpc_type) if self.metrics else None
            level = logging.DEBUG if service in QUIET_SERVICES else logging.INFO
            method = self._methods[path] = Method(path, service, name, grpc_type, metrics, level)
        return method

    def _begin(self, method: Method, context: Any) -> Call:
        call = _current.get()
        if call is None:  # not through intercept_service (never in the server)
            call = Call(time.perf_counter())
            _current.set(call)
        if method.metrics is not None:
            method.metrics.started()
        if self.access:
            call.peer = context.peer()  # while the call is live: grpc frees it at the end
        context.add_done_callback(lambda ctx: self._finish(method, call, ctx))
        return call

    def _finish(self, method: Method, call: Call, context: Any) -> None:
        seconds = time.perf_counter() - call.start
        code = final_code(call, context, self.stopping)
        if method.metrics is not None:
            method.metrics.finished(call, code, seconds)
        if self.access and access_log.isEnabledFor(method.level):
            _log_access(method, call, code, seconds, context)

    def _wrap(self, method: Method, handler: Any) -> Any:
        deserialize = _counting_deserializer(handler.request_deserializer)
        serialize = _counting_serializer(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._observed(method, handler.unary_unary), deserialize, serialize
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._observed(method, handler.stream_unary), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._observed(method, handler.unary_stream), deserialize, serialize
            )
        return grpc.stream_stream_rpc_method_handler(
            self._observed(method, handler.stream_stream), deserialize, serialize
        )

    def _observed(self, method: Method, behavior: Any) -> Any:
        """`behavior` with the call's record around it, the same shape (as keep_shape does).

        Written out rather than through keep_shape: the context manager's generator and
        wrapper object per call cost as much as the rest of the wrapper.
        """
        begin, access = self._begin, self.access

        def ended(call: Call) -> None:
            if access:
                call.principal = principal_of_call()

        if inspect.isasyncgenfunction(behavior):

            async def generated(request: Any, context: Any) -> AsyncIterator[Any]:
                call = begin(method, context)
                try:
                    with call:  # what it raises (a cancellation too) is the call's error
                        async for item in behavior(request, context):
                            yield item
                finally:
                    ended(call)

            return generated

        async def returned(request: Any, context: Any) -> Any:
            call = begin(method, context)
            try:
                with call:
                    return await behavior(request, context)
            finally:
                ended(call)

        return returned


def keep_shape(behavior: Any, scope: Callable[[Any], AbstractContextManager[Any]]) -> Any:
    """`behavior` run inside `scope(context)`, the same shape: a coroutine (context.write)
    stays one, an async generator stays one (grpc serves the two differently)."""
    if inspect.isasyncgenfunction(behavior):

        async def generated(request: Any, context: Any) -> AsyncIterator[Any]:
            with scope(context):
                async for item in behavior(request, context):
                    yield item

        return generated

    async def returned(request: Any, context: Any) -> Any:
        with scope(context):
            return await behavior(request, context)

    return returned


class Registering:
    """Stands in for the server where services are added: their handlers are observed.

    Without an interceptor nothing runs before a call's first request is parsed, so the
    call's record starts there (or, for a streamed request, when its handler starts).
    Methods no service has are not answered by a handler, and not observed either way.
    """

    def __init__(self, server: Any, observer: CallObserver) -> None:
        self.server, self.observer = server, observer

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_ObservedGeneric(h, self.observer) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.server.add_registered_method_handlers(
            service,
            {name: self.observer.handler(f"/{service}/{name}", h) for name, h in handlers.items()},
        )


class _ObservedGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, inner: Any, observer: CallObserver) -> None:
        self.inner, self.observer = inner, observer

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        return self.observer.handler(handler_call_details.method, handler)


def _counting_deserializer(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        call = _current.get()
        if call is None:  # observed from registration: the call's first step here
            call = Call(time.perf_counter())
            _current.set(call)
        call.bytes_in += len(data)
        call.messages_in += 1
        return parse(data) if parse is not None else data

    return deserialize


def _counting_serializer(encode: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serialize(message: Any) -> bytes:
        data = encode(message) if encode is not None else message
        call = _current.get()
        if call is not None:
            call.bytes_out += len(data)
            call.messages_out += 1
        return data

    return serialize


def _log_access(
    method: Method, call: Call, code: grpc.StatusCode, seconds: float, context: Any
) -> None:
    fields: dict[str, Any] = {
        "method": method.path,
        "code": code.name,
        "duration_ms": round(seconds * 1000, 3),
        "peer": call.peer,
        "principal": call.principal or "-",
        "bytes_in": call.bytes_in,
        "bytes_out": call.bytes_out,
    }
    tail = ""
    if call.ref:
        fields["ref"] = call.ref
        tail = f" ref={call.ref}"
    elif code is not grpc.StatusCode.OK:
        # What the client was told (capped where it was made: api/errors.py).
        details = context.details() or ""
        if details:
            fields["error"] = details
            tail = f" error={details!r}"
    args = (
        method.path,
        code.name,
        seconds * 1000,
        call.peer,
        fields["principal"],
        call.bytes_in,
        call.bytes_out,
        tail,
    )
    handler = logs.direct_handler(access_log, method.level)
    if handler is not None:  # logs.configure's handler alone would see the record
        handler.hold(method.level, ACCESS_LOGGER, ACCESS_FORMAT % args, fields)
        return
    # Made and handled directly: Logger.log would walk the stack for the caller's file
    # and line, which no access line shows, on every call.
    record = access_log.makeRecord(
        ACCESS_LOGGER, method.level, __file__, 0, ACCESS_FORMAT, args, None, extra=fields
    )
    access_log.handle(record)
