"""Bulk bytes (parts, ranged GETs) on botocore's synchronous client, on threads of their own."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import botocore.session
from botocore.config import Config

from asset_service.storage.s3._config import Credentials, client_settings

T = TypeVar("T")


class BulkClient(Protocol):
    """What the bulk path calls on botocore's S3 client (its stubs type clients loosely)."""

    def upload_part(self, **kwargs: Any) -> dict[str, Any]: ...

    def get_object(self, **kwargs: Any) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Bulk:
    """Moves an object's bytes on threads, with botocore's synchronous S3 client.

    Measured here (docs/object-store.md): aiobotocore spends, on the event loop that also
    carries every gRPC stream, ~2.2 ms of CPU per MiB sent as a part (aiohttp's send and
    SigV4's hash of the body) and ~1 ms per MiB received by a GET. The same requests made
    with botocore (a dependency of aiobotocore already, and documented thread-safe) on a
    thread cost the loop ~0.1 ms per MiB: urllib3 moves the bytes, and hashlib hashes
    them, without holding the GIL. The metadata requests (HEAD, create/complete/abort,
    listings, copies) stay on aiobotocore.

    A thread cannot be interrupted: a request whose caller went away runs to its end
    (bounded by the client's timeouts and retries), and settled() lets a caller wait for
    that before it relies on the request having stopped (an abort after the last part).
    """

    def __init__(self, creds: Credentials, max_connections: int) -> None:
        self._creds = creds
        self._threads = max_connections
        self._client: BulkClient | None = None
        self._pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        """Build the client (loads botocore's model of S3: call it off the event loop)."""
        creds, settings = self._creds, client_settings(self._creds, self._threads)
        self._client = botocore.session.get_session().create_client(  # type: ignore[assignment]
            "s3",
            endpoint_url=creds.endpoint_url,
            region_name=creds.region,
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            config=Config(**settings),
        )
        # One thread per pooled connection: a request never waits for a connection, and
        # never holds a thread the event loop's own work (hashing, files) would want.
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="s3-bulk")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> BulkClient:
        if self._client is None:
            raise RuntimeError("the bulk client is not open")
        return self._client

    def submit(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `work` for a bulk thread."""
        if self._pool is None:
            raise RuntimeError("the bulk client is not open")
        return self._pool.submit(functools.partial(work, *args, **kwargs))

    async def run(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """submit() and wait for it. A cancelled caller leaves work not yet started undone,
        and work under way to finish alone (its outcome dropped)."""
        return await asyncio.wrap_future(self.submit(work, *args, **kwargs))


async def settled(futures: Collection[Future[Any]]) -> None:
    """Wait until every one of `futures` has run or been cancelled, whatever its outcome."""
    waiting = [asyncio.wrap_future(future) for future in futures if not future.done()]
    if waiting:
        await asyncio.wait(waiting)
    for wrapped in waiting:
        if not wrapped.cancelled():
            wrapped.exception()  # taken: nobody else will look at it
