"""--workers N: N serving processes behind one port, each replaced if it dies.

The supervisor serves nothing itself. It reserves the port (a socket bound without
SO_REUSEPORT, so that the address is refused if anything holds it, then marked
SO_REUSEPORT so that its own workers, which set it too, can listen there; the kernel
spreads connections over them), claims a SQLite database (the flock an accidental second
server meets), creates one eventfd per worker for the database's wake-ups, and starts the
workers: the first alone (it migrates and recovers), then the others. Anything else that
tries the port, or the database, is refused as before.

SIGTERM/SIGINT are passed to every worker, each of which drains as a single server does;
SIGHUP too (credentials reload). A worker that dies is started again (at once, or after a
pause growing to RESTART_PAUSE_MAX if it keeps dying young); the kernel kills the workers
if the supervisor dies (worker.die_with_supervisor).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asset_service.config import Settings
from asset_service.domain.errors import AssetError, InvalidArgument
from asset_service.store import sqlite_path
from asset_service.worker import WORKER_ENV, WorkerRole

log = logging.getLogger(__name__)

# A worker that dies within this long of its start is dying young: the next start waits.
YOUNG_SECONDS = 10.0
RESTART_PAUSE_MAX = 30.0
READY_TIMEOUT_SECONDS = 300.0
# Past its grace a worker exits within server.HARD_STOP_SLACK (10 s) whatever is stuck;
# the supervisor gives it this long after the grace before it kills it.
STOP_SLACK_SECONDS = 15.0


def cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, within a cgroup CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = count or 1
    quota = _cpu_quota(cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def _cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup may use (None: no limit): cgroup v2's cpu.max
    ("max 100000" or "150000 100000"), else v1's cpu.cfs_quota_us (-1: none) over
    cpu.cfs_period_us, which hosts and container runtimes still on v1 set."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def worker_count(settings: Settings) -> int:
    """How many workers --workers asks for (0 is "auto": one per core)."""
    return settings.workers or cores()


def check(settings: Settings, count: int) -> None:
    """Refuse what several processes cannot share."""
    if settings.database_url == "memory://":
        raise InvalidArgument(
            f"--workers {count}: memory:// keeps records inside one process; use "
            "--workers 1, or a sqlite:/// or mongodb:// database the workers can share"
        )
    if settings.listen.startswith(("unix:", "unix-abstract:")):
        raise InvalidArgument(
            f"--workers {count}: several processes cannot share the unix socket "
            f"{settings.listen}; listen on HOST:PORT, or use --workers 1"
        )
    if settings.metrics_listen:
        port = int(settings.metrics_listen.rpartition(":")[2])
        if port and port + count - 1 > 65535:
            raise InvalidArgument(
                f"--metrics-listen {settings.metrics_listen} with --workers {count}: worker i "
                f"serves its metrics on port {port} + i, and {port + count - 1} is past "
                f"65535; give a port of at most {65536 - count}, or 0"
            )
    usable = cores()
    if count > usable:
        # Allowed (a test, a core count the quota hides), but rarely what was meant: each
        # worker is a whole process, started one after another, all sharing these cores.
        log.warning(
            "--workers %d is more than the %d core(s) this process may use: the workers "
            "share them (more CPU contention, slower start-up, more memory); 'auto' starts "
            "one per core",
            count,
            usable,
        )


class PortReservation:
    """The listen address held for the workers: refused if taken, then shared with them."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host
        bare = host.strip("[]")
        self.sockets: list[socket.socket] = []
        try:
            infos = socket.getaddrinfo(
                bare or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as exc:
            raise InvalidArgument(f"cannot listen on {listen}: {exc.strerror}") from None
        self.port = int(port)
        seen = set()
        try:
            for family, kind, proto, _, address in infos:
                if (family, address[0]) in seen:
                    continue
                seen.add((family, address[0]))
                self.sockets.append(self._bind(family, kind, proto, str(address[0]), listen))
        except BaseException:
            self.close()
            raise

    def _bind(self, family: int, kind: int, proto: int, address: str, listen: str) -> socket.socket:
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC binds [::]
            # Bound without SO_REUSEPORT first: anything already there makes this fail.
            sock.bind((address, self.port))
            self.port = sock.getsockname()[1]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AssetError(
                    f"address {listen} is in use: is another asset-service running? "
                    "choose another --listen (or ASSET_SERVICE_LISTEN)"
                ) from None
            raise AssetError(f"cannot listen on {listen}: {exc.strerror}") from None
        return sock

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # the read end of its ready pipe, until it is ready
    started: float = 0.0
    ready: bool = False
    young_deaths: int = 0
    start_at: float | None = None  # when a replacement is due


@dataclass
class Supervisor:
    argv: Sequence[str]
    settings: Settings
    count: int
    workers: list[_Worker] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        check(self.settings, self.count)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, lambda number, _: self.signals.append(number))
        self._wake_r = wake_r
        self.port = PortReservation(self.settings.listen)
        claim_fd = self._claim_database()
        self.wakeups: tuple[int, ...] = ()
        if claim_fd is not None:
            self.wakeups = tuple(
                os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(self.count)
            )
        self.workers = [_Worker(i) for i in range(self.count)]
        try:
            failed = self._start_all()
            if failed is not None:
                return failed
            log.info(
                "asset-service listening on %s (%d workers, pids %s; supervisor %d)",
                self.port.listen,
                self.count,
                " ".join(str(w.proc.pid) for w in self.workers if w.proc),
                os.getpid(),
            )
            return self._supervise()
        finally:
            self._kill_all()
            self.port.close()
            for fd in self.wakeups:
                os.close(fd)
            if claim_fd is not None:
                os.close(claim_fd)

    def _claim_database(self) -> int | None:
        """The SQLite database's flock, held for every worker (None for MongoDB)."""
        path = sqlite_path(self.settings.database_url)
        if path is None:
            return None
        from asset_service.store.sqlite._files import claim

        return claim(path.expanduser().resolve())

    def _spawn(self, worker: _Worker) -> None:
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        role = WorkerRole(worker.index, self.count, os.getpid(), ready_w, self.wakeups)
        env = {**os.environ, WORKER_ENV: role.encode()}
        args = [sys.executable, "-m", "asset_service", *self.argv]
        args += ["--listen", self.port.listen, "--workers", "1"]
        if self.settings.metrics_listen:
            args += ["--metrics-listen", _metrics_of(self.settings.metrics_listen, worker.index)]
        try:
            worker.proc = subprocess.Popen(args, env=env, pass_fds=(ready_w, *self.wakeups))
        finally:
            os.close(ready_w)
        worker.ready_fd, worker.ready, worker.started = ready_r, False, time.monotonic()
        worker.start_at = None

    def _start_all(self) -> int | None:
        """The first worker alone (it migrates the database and recovers), then the rest;
        None once all serve, else the exit status (and everything is stopped): 0 for a
        stop asked for meanwhile (a service manager's stop is no failure), 2 if one
        cannot start."""
        for group in (self.workers[:1], self.workers[1:]):
            for worker in group:
                self._spawn(worker)
            deadline = time.monotonic() + READY_TIMEOUT_SECONDS
            while not all(w.ready for w in group):
                self._wait(deadline - time.monotonic())
                for number in self._take_signals():
                    if number in (signal.SIGTERM, signal.SIGINT):
                        log.info("stopped while starting")
                        return 0
                failed = [w for w in group if not w.ready and w.proc and w.proc.poll() is not None]
                if failed or time.monotonic() > deadline:
                    worker = (failed or group)[0]
                    log.error(
                        "worker %d/%d could not start (%s); stopping",
                        worker.index + 1,
                        self.count,
                        _how(worker.proc) if failed else "not serving in time",
                    )
                    return 2
        return None

    def _wait(self, timeout: float) -> None:
        """Until a signal, a worker's ready pipe, or `timeout` (at most a second)."""
        fds = [self._wake_r, *(w.ready_fd for w in self.workers if w.ready_fd is not None)]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(fds, [], [], max(0.0, min(timeout, 1.0)))
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
        for worker in self.workers:
            if worker.ready_fd is not None and _readable(worker.ready_fd):
                said = os.read(worker.ready_fd, 1)
                os.close(worker.ready_fd)
                worker.ready_fd = None
                worker.ready = said == b"r"

    def _take_signals(self) -> list[int]:
        taken, self.signals[:] = list(self.signals), []
        for number in taken:
            if number == signal.SIGHUP:
                self._send(signal.SIGHUP)
        return taken

    def _supervise(self) -> int:
        while True:
            due = [w.start_at for w in self.workers if w.start_at is not None]
            self._wait(min(due) - time.monotonic() if due else 1.0)
            if any(n in (signal.SIGTERM, signal.SIGINT) for n in self._take_signals()):
                return self._stop()
            now = time.monotonic()
            for worker in self.workers:
                proc = worker.proc
                if proc is not None and proc.poll() is not None:
                    self._died(worker, now)
                elif worker.start_at is not None and now >= worker.start_at:
                    log.info("starting worker %d/%d again", worker.index + 1, self.count)
                    self._spawn(worker)

    def _died(self, worker: _Worker, now: float) -> None:
        assert worker.proc is not None
        young = now - worker.started < YOUNG_SECONDS
        worker.young_deaths = worker.young_deaths + 1 if young else 0
        pause = min(RESTART_PAUSE_MAX, 2.0 ** (worker.young_deaths - 1)) if young else 0.0
        log.warning(
            "worker %d/%d (pid %d) %s; starting another%s",
            worker.index + 1,
            self.count,
            worker.proc.pid,
            _how(worker.proc),
            f" in {pause:g}s" if pause else "",
        )
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None
        worker.proc, worker.ready, worker.start_at = None, False, now + pause

    def _send(self, number: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(number)

    def _stop(self) -> int:
        """Every worker drains (as a single server would), within its grace and slack."""
        self.stopping = True
        grace = self.settings.shutdown_grace_seconds
        log.info("shutting down %d workers (grace %.1fs)", self.count, grace)
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_SLACK_SECONDS
        live = [w.proc for w in self.workers if w.proc is not None]
        status = 0
        for proc in live:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                code = proc.wait()
            status = status or (1 if code else 0)
        log.info("stopped")
        return status

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
            proc = worker.proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _metrics_of(listen: str, index: int) -> str:
    """Worker `index`'s metrics address: the next ports after the one asked for (each
    process counts its own calls; Prometheus scrapes each), or port 0 for each if 0."""
    host, _, port = listen.rpartition(":")
    return f"{host}:{int(port) + index if int(port) else 0}"


def _readable(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _how(proc: subprocess.Popen[bytes] | None) -> str:
    code = proc.poll() if proc is not None else None
    if code is None:
        return "is running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def supervise(argv: Sequence[str], settings: Settings) -> int:
    """Run `settings.workers` workers (the `asset-service` command's serve path)."""
    try:
        return Supervisor(argv, settings, worker_count(settings)).run()
    except AssetError as exc:
        log.error("cannot start: %s", exc.message)
        return 2
