"""When an upload resumes after a cut (I/O-free, shared by the sync and asyncio clients)."""

from __future__ import annotations

import random
import uuid

import grpc

# Files this big or bigger upload resumably by default. Below one object-store part
# (8 MiB) a cut stream keeps nothing there anyway, and sending them again costs under a
# second; bigger ones would lose minutes or hours to a dropped connection.
RESUMABLE_BYTES = 8 * 1024 * 1024
# Files of this size or more first ask the server to reuse bytes it already stores
# (UploadHeader.reuse_stored_bytes): one round trip without a chunk, which a smaller file
# costs about as much to send.
REUSE_BYTES = 1024 * 1024
DEFAULT_ATTEMPTS = 10
FIRST_DELAY = 0.5
MAX_DELAY = 8.0

# What a cut looks like from the client: the connection dropped or the server went away
# (UNAVAILABLE), the stream was cancelled by the server or a proxy (CANCELLED), or the
# upload's previous stream still holds it (ABORTED: on an object store a server that died
# mid-stream holds it up to 90 s).
RESUMABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED}
)


def moved_on(exc: grpc.RpcError) -> bool:
    """FAILED_PRECONDITION "resume at committed_bytes=N": the server made more durable
    after QueryUpload answered (the cut stream's end): ask again and resume from there."""
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    return exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "resume at committed_bytes=" in (
        details or ""
    )


def lost_status(exc: grpc.RpcError) -> bool:
    """grpc's asyncio client reports INTERNAL "Internal error from Core" for a stream that
    ended while a chunk was being written (grpc/grpc#36066): a dropped connection, or a
    server that refused the stream. QueryUpload tells which; a refusal repeats and ends
    the attempts."""
    details = exc.details() if callable(getattr(exc, "details", None)) else ""
    return exc.code() == grpc.StatusCode.INTERNAL and "Internal error from Core" in (details or "")


def new_upload_id() -> str:
    return uuid.uuid4().hex


class Retries:
    """A bounded number of attempts with capped, jittered exponential backoff."""

    def __init__(self, attempts: int = DEFAULT_ATTEMPTS) -> None:
        if attempts < 1:
            raise ValueError(f"upload_attempts must be at least 1 (got {attempts})")
        self.attempts = attempts
        self.used = 1  # the first stream

    def delay(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before the next attempt after `exc`; None to give up."""
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        again = code in RESUMABLE_CODES or moved_on(exc) or lost_status(exc)
        if not again or self.used >= self.attempts:
            return None
        delay: float = min(MAX_DELAY, FIRST_DELAY * 2.0 ** (self.used - 1))
        self.used += 1
        return delay * random.uniform(0.5, 1.0)
