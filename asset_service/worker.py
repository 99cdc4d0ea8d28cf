"""A worker process of a supervised server (--workers): what the supervisor hands it."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass

# Not a setting: the supervisor sets it for its own children only (supervisor.py).
WORKER_ENV = "_ASSET_SERVICE_WORKER"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerRole:
    """Worker `index` of `count`. `listen` is the supervisor's address with the port it
    reserved; `ready_fd` is written once this worker serves; `wakeups` holds one eventfd per
    worker when they share a SQLite file (store/sqlite/_shared.py), else nothing."""

    index: int
    count: int
    supervisor: int
    ready_fd: int
    wakeups: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"worker {self.index + 1}/{self.count}"

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerRole | None:
        text = env.get(WORKER_ENV)
        if not text:
            return None
        fields = json.loads(text)
        fields["wakeups"] = tuple(fields["wakeups"])
        return cls(**fields)

    def ready(self) -> None:
        """Tell the supervisor this worker serves (once)."""
        os.write(self.ready_fd, b"r")
        os.close(self.ready_fd)


def die_with_supervisor(supervisor: int) -> None:
    """In a worker, before it opens anything: the kernel kills it if the supervisor dies
    (SIGKILL included: no orphan keeps the port and the database), as one process would."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the line above
        os._exit(1)
