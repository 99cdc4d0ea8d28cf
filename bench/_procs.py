"""Child processes of the bench (ceilings, a CPU burner) and what /proc says about a server."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from types import TracebackType


class Ceiling:
    """One bare server from bench._bare in its own process."""

    def __init__(
        self,
        kind: str,
        max_streams: int,
        replies: dict[str, bytes] | None = None,
        service_malloc: bool = False,
        port: int = 0,
        shared: bool = False,
    ):
        args = [sys.executable, "-m", "bench._bare", kind, "--max-streams", str(max_streams)]
        if service_malloc:
            args.append("--service-malloc")
        if shared:  # SO_REUSEPORT: one of several ceilings on `port` (0: the first, any port)
            args += ["--shared", "--port", str(port)]
        for method, reply in (replies or {}).items():
            args += ["--reply", f"{method}={reply.hex()}"]
        self.kind = kind
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError(f"ceiling {kind} did not start (said {line!r})")
        self.port = int(line.split()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> Ceiling:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class Burner:
    """A busy-loop process keeping one core busy while it lives."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    def __enter__(self) -> Burner:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.proc.kill()
        self.proc.wait(5)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def minor_faults(pid: int) -> int:
    """Field 10 (minflt) of /proc/<pid>/stat, all threads of the process."""
    with open(f"/proc/{pid}/stat") as fh:
        after_name = fh.read().rsplit(")", 1)[1].split()
    return int(after_name[7])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (utime, stime: fields 14, 15 of /proc/<pid>/stat),
    all its threads, ended ones included."""
    with open(f"/proc/{pid}/stat") as fh:
        after_name = fh.read().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU of this (the client's) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RssSampler:
    """VmRSS of a process every `interval` seconds on a thread; growth = max - value before."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.before = rss_bytes(pid)
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def wait_quiet(seconds: float = 0.2) -> None:
    """A short pause between timed runs so one run's teardown does not overlap the next."""
    time.sleep(seconds)
