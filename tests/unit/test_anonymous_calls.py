"""Without any security configured, calls take the interceptor's cheap path as ANONYMOUS;
a call that sends credentials anyway is still refused, and unknown methods too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2 as pb
from asset_service.api.interceptor import SecurityInterceptor, security_interceptor
from asset_service.config import load_settings
from asset_service.security.principal import ANONYMOUS, Principal, current_principal
from asset_service.security.setup import Security
from tests.unit.in_process import served_from_memory

GET = "/asset.v1.AssetService/GetAsset"
WATCH = "/asset.v1.AssetService/WatchAsset"
UPLOAD = "/asset.v1.AssetService/UploadAsset"


class Aborted(Exception):
    pass


class Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata
        self.code: grpc.StatusCode | None = None
        self.written: list[Any] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def write(self, message: Any) -> None:
        self.written.append(message)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def interceptor(tmp_path: Path, *args: str) -> SecurityInterceptor:
    security = Security(load_settings(["--storage-root", str(tmp_path), *args], {}))
    return security_interceptor(security, None)  # type: ignore[arg-type]


async def test_an_open_server_runs_handlers_as_anonymous(tmp_path: Path) -> None:
    seen: list[Principal | None] = []

    async def get(request: Any, context: Any) -> str:
        seen.append(current_principal())
        return "answer"

    async def watch(request: Any, context: Any) -> AsyncIterator[str]:
        seen.append(current_principal())
        yield "event"

    async def upload(requests: AsyncIterator[Any], context: Any) -> int:
        seen.append(current_principal())
        return len([r async for r in requests])

    handlers = {
        GET: grpc.unary_unary_rpc_method_handler(get),
        WATCH: grpc.unary_stream_rpc_method_handler(watch),
        UPLOAD: grpc.stream_unary_rpc_method_handler(upload),
    }

    async def continuation(details: Any) -> Any:
        return handlers[details.method]

    icpt = interceptor(tmp_path)
    assert icpt.anonymous
    first = await icpt.intercept_service(continuation, Details(GET))  # type: ignore[arg-type]
    assert await icpt.intercept_service(continuation, Details(GET)) is first, "reused"  # type: ignore[arg-type]
    assert await first.unary_unary(b"", Context()) == "answer"
    streamed = await icpt.intercept_service(continuation, Details(WATCH))  # type: ignore[arg-type]
    context = Context()
    await streamed.unary_stream(b"", context)  # writes each item: generators end in the call
    assert context.written == ["event"]
    uploaded = await icpt.intercept_service(continuation, Details(UPLOAD))  # type: ignore[arg-type]

    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    assert await uploaded.stream_unary(two(), Context()) == 2
    assert seen == [ANONYMOUS, ANONYMOUS, ANONYMOUS]
    assert current_principal() is None, "nothing leaks out of the call"

    # Credentials sent to a server that cannot check them: refused, as before.
    context = Context((("authorization", "Bearer not-a-token"),))
    with pytest.raises(Aborted, match="not valid"):
        await first.unary_unary(b"", context)
    assert context.code is grpc.StatusCode.UNAUTHENTICATED and len(seen) == 3

    async def unknown_continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(get)

    unknown = await icpt.intercept_service(unknown_continuation, Details("/other.Svc/Do"))  # type: ignore[arg-type]
    context = Context()
    with pytest.raises(Aborted, match="no access rule"):
        await unknown.unary_unary(b"", context)
    assert context.code is grpc.StatusCode.PERMISSION_DENIED


def test_any_credential_source_turns_the_cheap_path_off(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 48)
    assert not interceptor(tmp_path, "--token-secret-file", str(secret)).anonymous
    tokens = tmp_path / "tokens.toml"
    tokens.write_text("")
    assert not interceptor(tmp_path, "--tokens-file", str(tokens)).anonymous


async def test_a_server_without_security_serves_as_anonymous(
    tmp_path: Path,
) -> None:
    async with served_from_memory(tmp_path) as (_, stub):
        created = await stub.CreatePendingAsset(
            pb.CreatePendingAssetRequest(task_id="t", label="out.txt")
        )
        assert created.asset.created_by == ANONYMOUS.name, "the handler ran as ANONYMOUS"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetAsset(
                pb.GetAssetRequest(asset_id=created.asset.id),
                metadata=(("authorization", "Bearer not-a-token"),),
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        failed = await stub.FailAsset(pb.FailAssetRequest(asset_id=created.asset.id, reason="test"))
        assert failed.asset.updated_by == ANONYMOUS.name
        request = pb.WatchAssetRequest(asset_ids=[created.asset.id])
        events = [e async for e in stub.WatchAsset(request, timeout=10)]
        assert [(e.type, e.asset) for e in events] == [(pb.WATCH_EVENT_TYPE_SNAPSHOT, failed.asset)]
