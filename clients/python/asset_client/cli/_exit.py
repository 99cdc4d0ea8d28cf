"""The exit statuses of `asset`: one table, derived from the gRPC status codes."""

from __future__ import annotations

import signal

import grpc

OK = 0
# Something on this machine: a file that cannot be read or written, a full disk, the CLI's
# extra not installed, or (asset run) a command that succeeded without writing an output.
LOCAL = 1
# The command line itself: an unknown option, a missing argument, a malformed value.
USAGE = 2
# A call the server (or the channel) answered with status code N exits GRPC_BASE + N:
# 11 CANCELLED, 12 UNKNOWN, 13 INVALID_ARGUMENT, 14 DEADLINE_EXCEEDED, 15 NOT_FOUND,
# 16 ALREADY_EXISTS, 17 PERMISSION_DENIED, 18 RESOURCE_EXHAUSTED, 19 FAILED_PRECONDITION,
# 20 ABORTED, 21 OUT_OF_RANGE, 22 UNIMPLEMENTED, 23 INTERNAL, 24 UNAVAILABLE, 25 DATA_LOSS,
# 26 UNAUTHENTICATED: above what commands commonly use, below the shell's 126-165.
GRPC_BASE = 10
# Ended by signal N (Ctrl-C: 130), the shell's convention; asset run's command likewise.
SIGNAL_BASE = 128


def for_code(code: grpc.StatusCode) -> int:
    """The exit status for a call that ended with `code`."""
    number: int = code.value[0]
    return OK if number == 0 else GRPC_BASE + number


def for_signal(signum: int) -> int:
    return SIGNAL_BASE + signum


def for_returncode(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return for_signal(-returncode) if returncode < 0 else returncode


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


TABLE = [
    (OK, "success"),
    (LOCAL, "a local error: a file, the disk, the [cli] extra missing"),
    (USAGE, "a usage error: unknown option, missing or malformed argument"),
    *(
        (for_code(c), f"the call ended with gRPC status {c.name}")
        for c in grpc.StatusCode
        if c.value[0]
    ),
    (130, "interrupted (Ctrl-C); 128 + N for signal N"),
]
