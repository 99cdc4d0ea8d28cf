"""The server interceptor: every call but health is admitted by a Guard before its handler."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc

from asset_service.api.errors import status_code, status_message
from asset_service.api.guard import (
    AssetLookup,
    Ctx,
    Guard,
    Refused,
    audit_code,
    audit_subjects,
)
from asset_service.security import audit
from asset_service.security.authn import Authenticator
from asset_service.security.errors import Unauthenticated
from asset_service.security.principal import (
    ANONYMOUS,
    Principal,
    note_caller,
    reset_principal,
    set_principal,
)
from asset_service.security.roles import REFLECTION_METHODS, rule_for
from asset_service.security.setup import Security


def security_interceptor(security: Security, assets: AssetLookup) -> SecurityInterceptor:
    """The interceptor enforcing `security` (its settings, its reloadable files)."""
    settings = security.settings
    return SecurityInterceptor(
        security.authenticator,
        assets,
        reflection_open=settings.reflection == "open" or not security.authenticated,
        first_message_timeout=settings.upload_idle_timeout_seconds,
        anonymous=security.anonymous,
        import_roots=settings.import_roots,
    )


class SecurityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Every call but health passes here before its handler runs (docs/security.md)."""

    def __init__(
        self,
        authenticator: Authenticator,
        assets: AssetLookup,
        *,
        reflection_open: bool,
        first_message_timeout: float = 60.0,
        anonymous: bool = False,
        import_roots: Sequence[Path] = (),
    ) -> None:
        self.authenticator = authenticator
        self.assets = assets
        self.reflection_open = reflection_open
        self.first_message_timeout = first_message_timeout
        # Where task tokens' server-side files may lie: <root>/<task id>/ (guard.py).
        self.import_roots = tuple(import_roots)
        # No tokens file, client CA or task-token secret, now or after a reload: every call
        # without credentials is ANONYMOUS, allowed everything, audited nowhere. Such calls
        # take a cheaper path (no Guard, no auth context, one handler per method reused);
        # a call that sends credentials anyway is refused by the guard as before.
        self.anonymous = anonymous
        self._anonymous_handlers: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        rule = rule_for(method)
        if rule is not None and rule.role is None:
            return handler
        if method in REFLECTION_METHODS and self.reflection_open:
            return handler
        if self.anonymous and rule is not None:  # a method without a rule is refused
            return self.anonymous_handler(method, handler)
        return _guarded(handler, self._guard(method))

    def _guard(self, method: str) -> Guard:
        return Guard(
            method,
            rule_for(method),
            self.authenticator,
            self.assets,
            self.first_message_timeout,
            self.import_roots,
        )

    def anonymous_handler(self, method: str, handler: Any) -> Any:
        """`handler` as this interceptor serves it when nothing can authenticate a caller.

        The same for every call of `method`, so server.py applies it once at registration
        and serves AssetService without grpc's per-call interceptor chain. Here too the
        generic handler hands out the same handler object for a method every time.
        """
        assert self.anonymous and rule_for(method) is not None, method
        cached = self._anonymous_handlers.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _as_anonymous(handler, lambda: _guarded(handler, self._guard(method)))
        self._anonymous_handlers[method] = (handler, wrapped)
        return wrapped


def _sends_credentials(context: Ctx) -> bool:
    return any(key == "authorization" for key, _ in context.invocation_metadata() or ())


# Each kind of method handler: the attribute holding its behaviour, and its factory.
_HANDLER_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def _as_anonymous(handler: Any, guarded: Callable[[], Any]) -> Any:
    """The handler run as ANONYMOUS, or behind the full guard for a call with credentials
    (which an open server refuses, as before). Behaviours are typed Any, as in _guarded;
    a request is a message, or the stream of them of a client-streaming method."""
    kind = next(k for k in _HANDLER_KINDS if getattr(handler, k) is not None)
    behavior = getattr(handler, kind)

    async def returning(request: Any, context: Ctx) -> Any:
        if _sends_credentials(context):
            return await getattr(guarded(), kind)(request, context)
        token = set_principal(ANONYMOUS)
        try:
            return await behavior(request, context)
        finally:
            reset_principal(token)

    async def streaming(request: Any, context: Ctx) -> None:
        if _sends_credentials(context):
            await getattr(guarded(), kind)(request, context)
            return
        await _stream_as(ANONYMOUS, behavior(request, context), context)

    call = streaming if kind.endswith("_stream") else returning
    return _HANDLER_KINDS[kind](call, handler.request_deserializer, handler.response_serializer)


async def _stream_as(principal: Principal, result: Any, context: Ctx) -> None:
    """Run a streaming handler as `principal`: an async generator (its items written
    here), or a coroutine writing with context.write.

    The wrappers grpc calls are coroutines, not async generators: grpc leaves a generator
    handler unclosed when the call ends while it waits at a `yield` (the client went away
    mid-write), and the garbage collector finalized it later in another context, where
    reset_principal failed ("Token ... created in a different Context") and files stayed
    open until then. Here every generator is closed in the call's own task.
    """
    token = set_principal(principal)
    try:
        if inspect.isasyncgen(result):
            async with contextlib.aclosing(result):
                async for item in result:
                    await context.write(item)
        else:
            await result
    finally:
        reset_principal(token)


async def _abort(context: Ctx, guard: Guard, refused: Refused, request: Any) -> NoReturn:
    code = status_code(refused.error)
    if refused.principal is not None:
        note_caller(refused.principal)  # the call's access line names who was refused
    if guard.rule is not None and guard.rule.audited:
        audit.record(refused.principal, guard.rpc, audit_subjects(request, None), code)
    await context.abort(code, status_message(refused.error))


def _guarded(handler: Any, guard: Guard) -> Any:
    """The same handler (grpc.RpcMethodHandler), behind the guard: one wrapper per call shape.

    Behaviours are typed Any: grpc-stubs types them as the blocking server's.
    """
    audited = guard.rule is not None and guard.rule.audited

    async def admitted(context: Ctx, request: Any) -> Principal:
        try:
            principal = guard.admit(context)
            if request is not None:
                await guard.check_scope(principal, request)
            return principal
        except Unauthenticated as exc:
            refused = Refused(None, exc)
        except Refused as exc:
            refused = exc
        await _abort(context, guard, refused, request)

    async def run(
        principal: Principal, call: Awaitable[Any], context: Ctx, request: Callable[[], Any]
    ) -> Any:
        """Await the handler as `principal`; audit the outcome of a mutating call."""
        token = set_principal(principal)
        response, failure = None, None
        try:
            response = await call
            return response
        except BaseException as exc:
            failure = exc
            raise
        finally:
            reset_principal(token)
            if audited:
                subjects = audit_subjects(request(), response)
                audit.record(principal, guard.rpc, subjects, audit_code(context, failure))

    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def unary_unary_call(request: Any, context: Ctx) -> Any:
            principal = await admitted(context, request)
            return await run(principal, unary_unary(request, context), context, lambda: request)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary_call, handler.request_deserializer, handler.response_serializer
        )

    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def unary_stream_call(request: Any, context: Ctx) -> None:
            principal = await admitted(context, request)
            failure: BaseException | None = None
            try:
                await _stream_as(principal, unary_stream(request, context), context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                if audited:  # ScrubAssets: it may mark assets corrupt
                    subjects = audit_subjects(request, None)
                    audit.record(principal, guard.rpc, subjects, audit_code(context, failure))

        return grpc.unary_stream_rpc_method_handler(
            unary_stream_call, handler.request_deserializer, handler.response_serializer
        )

    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def stream_unary_call(requests: AsyncIterator[Any], context: Ctx) -> Any:
            principal = await admitted(context, None)
            messages = aiter(requests)
            seen: list[Any] = []  # the first message once read: scope check, audit line
            if principal.task is not None:
                try:
                    seen.append(await guard.first_message(principal, messages))
                    await guard.check_scope(principal, seen[0])
                except Refused as refused:
                    await _abort(context, guard, refused, seen[0] if seen else None)
            call = stream_unary(_tapped(seen, messages), context)
            return await run(principal, call, context, lambda: seen[0] if seen else None)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary_call, handler.request_deserializer, handler.response_serializer
        )

    stream_stream = handler.stream_stream

    async def stream_stream_call(requests: AsyncIterator[Any], context: Ctx) -> None:
        principal = await admitted(context, None)
        await _stream_as(principal, stream_stream(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream_call, handler.request_deserializer, handler.response_serializer
    )


async def _tapped(seen: list[Any], messages: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The first message (already read into `seen`, or read now and kept there), the rest."""
    if seen:
        if seen[0] is not None:
            yield seen[0]
    else:
        first = await anext(messages, None)
        if first is None:
            return
        seen.append(first)
        yield first
    async for item in messages:
        yield item
