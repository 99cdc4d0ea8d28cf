"""Which worker process of a --workers server holds which client connection (from /proc)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc

_ESTABLISHED = "01"


def workers_of(supervisor: int) -> list[int]:
    """The pids of the supervisor's children, oldest first."""
    path = Path(f"/proc/{supervisor}/task/{supervisor}/children")
    return sorted(int(pid) for pid in path.read_text().split())


def wait_for_workers(
    supervisor: int,
    count: int,
    unlike: frozenset[int] = frozenset(),
    timeout: float = 30.0,
) -> list[int]:
    """The children once there are `count` of them and none is in `unlike`."""
    deadline = time.monotonic() + timeout
    while True:
        pids = workers_of(supervisor)
        if len(pids) == count and not set(pids) & unlike:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers of {supervisor}: {pids}, wanted {count} new")
        time.sleep(0.05)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def peers(pid: int, port: int) -> set[int]:
    """Client ports of the established connections `pid` holds on its listening `port`."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == _ESTABLISHED and inode in inodes and int(local.split(":")[1], 16) == port:
                found.add(int(remote.split(":")[1], 16))
    return found


async def channel_on(
    pid: int, workers: list[int], port: int, ping: Callable[[grpc.aio.Channel], object]
) -> grpc.aio.Channel:
    """A new channel whose connection the kernel gave to worker `pid` (tries up to 60)."""
    for _ in range(60):
        before = {w: peers(w, port) for w in workers}
        # A subchannel pool of its own: channels to one address otherwise share a connection.
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        await ping(channel)  # type: ignore[misc]
        owner = [w for w in workers if peers(w, port) - before[w]]
        if owner == [pid]:
            return channel
        await channel.close()
    raise AssertionError(f"no connection landed on worker {pid} in 60 tries")
