"""Which metadata-store backends the suite can reach here, and what each cannot do."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FERRETDB_VERSION = "v1.24.0"
FERRETDB_BIN = REPO / ".tools" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

# What FerretDB 1.x (no replica set) cannot do; those cases run only on a real replica set.
FERRETDB_LACKS = {
    "change_streams": "no change streams (FerretDB 1.x has no replica set)",
    "transactions": "no multi-document transactions (FerretDB 1.x)",
    "atomic_find_and_modify": (
        "FerretDB 1.24 (SQLite) runs findAndModify as read-then-write: here several of 20 "
        "racing conditional updates all 'won', so the race contract needs real MongoDB"
    ),
}
LACKS: dict[str, dict[str, str]] = {"sqlite": {}, "mongo": {}, "ferretdb": FERRETDB_LACKS}


def ferretdb_binary() -> Path:
    return Path(os.environ.get("FERRETDB_BIN", FERRETDB_BIN))


def missing_backends() -> dict[str, str]:
    """Backends that will not run here, with the reason."""
    missing = {}
    if not os.environ.get("MONGODB_URI"):
        missing["mongo"] = "MONGODB_URI not set (a replica set URL; see docs/mongodb.md)"
    if not ferretdb_binary().is_file():
        missing["ferretdb"] = f"{ferretdb_binary()} missing (`make ferretdb` builds it)"
    return missing


def report_lines() -> list[str]:
    missing = missing_backends()
    ran = [name for name in LACKS if name not in missing]
    lines = [f"metadata store backends under test: {', '.join(ran)}"]
    lines += [f"  NOT run against {name}: {why}" for name, why in missing.items()]
    if "ferretdb" in ran:
        lines += [f"  ferretdb leaves out cases needing {cap}" for cap in FERRETDB_LACKS]
    if "mongo" in missing:
        lines.append("  end-to-end tests run on sqlite (MONGODB_URI runs them on MongoDB)")
    return lines


class FerretDB:
    """A FerretDB process (SQLite backend) on a fixed port; restartable on the same data."""

    def __init__(self, state: Path) -> None:
        self.state = state
        (state / "data").mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 20) -> FerretDB:
        self.proc = subprocess.Popen(
            [
                str(ferretdb_binary()),
                "--handler=sqlite",
                f"--sqlite-url=file:{self.state / 'data'}/",
                f"--state-dir={self.state}",
                f"--listen-addr=127.0.0.1:{self.port}",
                "--debug-addr=-",
                "--telemetry=disable",
                "--log-level=ERROR",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"FerretDB did not start (exit {self.proc.poll()})"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
