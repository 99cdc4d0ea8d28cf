"""A pass-through gRPC proxy that counts the calls of each method (e.g. ReadAsset)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

# Headers grpc sets itself on each hop; everything else (authorization...) goes through.
_HOP_HEADERS = ("user-agent",)


class CountingProxy:
    """Listens on 127.0.0.1:<free port> and forwards every call, unchanged, to `upstream`.

    Each method is proxied as a bidirectional stream of raw bytes, which carries unary and
    streaming calls alike; the status, message and trailing metadata come back as the
    server sent them. `calls["ReadAsset"]` counts the calls that reached the server.
    """

    def __init__(self, upstream: str, delays: dict[str, float] | None = None) -> None:
        self.calls: Counter[str] = Counter()
        # Seconds each call of a method waits before it is forwarded (to make calls overlap).
        self.delays = delays or {}
        # Cut the next UploadAsset stream that reaches this many request bytes: the
        # server's call is cancelled and the client's ends with UNAVAILABLE, as when a
        # connection drops. One cut per setting (a shorter stream, such as a client's
        # question whether the server stores the bytes already, leaves it set).
        self.cut_upload_after: int | None = None
        # Request bytes of each UploadAsset stream, in order.
        self.upload_bytes: list[int] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32), handlers=[_Handler(self)]
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()

    def count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    def forward(self, method: str, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        name = method.rsplit("/", 1)[-1]
        self.count(name)
        if name in self.delays:
            time.sleep(self.delays[name])
        metadata = [
            (k, v)
            for k, v in context.invocation_metadata()
            if not k.startswith((":", "grpc-")) and k not in _HOP_HEADERS
        ]
        remaining = context.time_remaining()
        # Without a deadline grpc reports a huge (or no) time left: forward none then.
        timeout = remaining if remaining is not None and remaining < 1e6 else None
        cut = threading.Event()
        if name == "UploadAsset":
            requests = self._measured(requests, cut)
        call = self._channel.stream_stream(method)(requests, metadata=metadata, timeout=timeout)
        context.add_callback(call.cancel)
        try:
            yield from call
            context.set_trailing_metadata(call.trailing_metadata() or ())
        except grpc.RpcError as exc:
            if cut.is_set():
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection cut by the test proxy")
            context.set_trailing_metadata(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
            context.abort(exc.code(), exc.details() or "")  # type: ignore[attr-defined]

    def _measured(self, requests: Iterator[bytes], cut: threading.Event) -> Iterator[bytes]:
        with self._lock:
            index = len(self.upload_bytes)
            self.upload_bytes.append(0)
        for request in requests:
            if self._take_cut(self.upload_bytes[index]):
                cut.set()
                raise ConnectionAbortedError("cut")  # grpc cancels the server's call
            self.upload_bytes[index] += len(request)
            yield request

    def _take_cut(self, sent: int) -> bool:
        # Taken by the stream that reaches the limit, not claimed when a stream starts: a
        # short stream (the client's question) may still be open, unfinished, when the
        # upload that should be cut begins.
        with self._lock:
            limit = self.cut_upload_after
            if limit is None or sent < limit:
                return False
            self.cut_upload_after = None
            return True


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: CountingProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method  # type: ignore[attr-defined]

        def behaviour(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            return self._proxy.forward(method, requests, context)

        return grpc.stream_stream_rpc_method_handler(behaviour)
