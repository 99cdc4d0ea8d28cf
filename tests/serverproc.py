"""Start the real asset-service as a child process on port 0, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

READY = re.compile(r"asset-service listening on (\S+):(\d+)")


def database_url_for(tmp_path: Path) -> str:
    """sqlite in tmp_path, or a fresh database on MONGODB_URI's replica set when given."""
    mongo = os.environ.get("MONGODB_URI")
    if mongo:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(mongo)
        return urlunsplit(parts._replace(path=f"/asset_test_{uuid.uuid4().hex[:12]}"))
    return f"sqlite:///{tmp_path / 'assets.db'}"


def drop_database_of(database_url: str) -> None:
    """Remove a per-test MongoDB database made by database_url_for (no-op for sqlite)."""
    if not database_url.startswith("mongodb"):
        return
    from urllib.parse import urlsplit

    from pymongo import MongoClient

    name = urlsplit(database_url).path.lstrip("/")
    client: MongoClient[dict[str, object]] = MongoClient(
        database_url, serverSelectionTimeoutMS=5000
    )
    try:
        client.drop_database(name)
    finally:
        client.close()


class ServerProcess:
    """One asset-service process; restartable on the same storage root and database."""

    def __init__(
        self,
        root: Path,
        database_url: str,
        import_roots: list[Path] | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        self.root = root
        self.database_url = database_url
        self.import_roots = import_roots or []
        self.extra_args = extra_args or []
        self.env = env or {}
        # A command the server runs under, e.g. unshare for a mount namespace of its own;
        # it must exec the server (the pid is the server's).
        self.launcher = launcher or []
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.log: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> ServerProcess:
        args = [
            *self.launcher,
            sys.executable,
            "-m",
            "asset_service",
            "--listen",
            "127.0.0.1:0",
            "--storage-root",
            str(self.root),
            "--database-url",
            self.database_url,
            "--log-level",
            "INFO",
            "--shutdown-grace",
            "2",
            *(a for r in self.import_roots for a in ("--import-root", str(r))),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
        env.update(self.env)
        self.proc = subprocess.Popen(
            args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
        )
        ready = threading.Event()

        def drain() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match:
                    self.port = int(match.group(2))
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("asset-service did not start:\n" + "".join(self.log))
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def rss_bytes(self) -> int:
        return self._status_kib("VmRSS") * 1024

    def peak_rss_bytes(self) -> int:
        """The most resident memory since start or reset_peak_rss(): the kernel's own
        high-water mark (VmHWM), so no short peak is missed between two samples."""
        return self._status_kib("VmHWM") * 1024

    def reset_peak_rss(self) -> None:
        """Set the high-water mark back to the current RSS (proc(5): clear_refs, 5)."""
        with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
            fh.write("5")

    def _status_kib(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no {field} in /proc/{self.pid}/status")


@contextlib.contextmanager
def serving(proc: ServerProcess) -> Iterator[ServerProcess]:
    """Starts the server; on leaving, stops it and drops its database (what every test
    that starts a server of its own must do, even when its body fails)."""
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        drop_database_of(proc.database_url)
