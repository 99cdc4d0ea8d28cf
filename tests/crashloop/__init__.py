"""Crash-loop harness: mixed load on a real server, SIGKILL at a random moment, restart, audit."""

from tests.crashloop._loop import CrashLoop
from tests.crashloop._model import (
    CALL_TIMEOUT,
    CHANNEL_OPTIONS,
    STAGING_KEEP,
    WEIGHTS,
    CrashLoopConfig,
    Report,
    Violation,
)
from tests.crashloop._storage import connect, list_all, read_back, storage_violations

__all__ = [
    "CALL_TIMEOUT",
    "CHANNEL_OPTIONS",
    "STAGING_KEEP",
    "WEIGHTS",
    "CrashLoop",
    "CrashLoopConfig",
    "Report",
    "Violation",
    "connect",
    "list_all",
    "read_back",
    "storage_violations",
]
