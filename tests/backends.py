"""Which metadata-store backends the suite can reach here, and what each cannot do."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FERRETDB_VERSION = "v1.24.0"
FERRETDB_BIN = REPO / ".tools" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"  # as pinned in scripts/install_minio.sh
MINIO_BIN = REPO / ".tools" / f"minio-{MINIO_VERSION}" / "minio"
GRPCURL_VERSION = "v1.9.4"  # as pinned in scripts/install_grpcurl.sh
GRPCURL_BIN = REPO / ".tools" / f"grpcurl-{GRPCURL_VERSION}" / "grpcurl"

# What FerretDB 1.x (no replica set) cannot do; those cases run only on a real replica set.
FERRETDB_LACKS = {
    "change_streams": "no change streams (FerretDB 1.x has no replica set)",
    "transactions": "no multi-document transactions (FerretDB 1.x)",
    "snapshot_reads": "no snapshot sessions (FerretDB 1.x has no replica set)",
    "atomic_find_and_modify": (
        "FerretDB 1.24 (SQLite) runs findAndModify as read-then-write: here several of 20 "
        "racing conditional updates all 'won', so the race contract needs real MongoDB"
    ),
}
# memory: everything (it runs in-process, so it is always present).
LACKS: dict[str, dict[str, str]] = {
    "memory": {},
    "sqlite": {},
    "mongo": {},
    "ferretdb": FERRETDB_LACKS,
}


def ferretdb_binary() -> Path:
    return Path(os.environ.get("FERRETDB_BIN", FERRETDB_BIN))


def minio_binary() -> Path:
    return Path(os.environ.get("MINIO_BIN", MINIO_BIN))


def _unbuilt(binary: Path, target: str) -> str | None:
    """Why a tool cannot run here (`make target` builds it), or None."""
    return None if binary.is_file() else f"{binary} missing (`make {target}` builds it)"


def minio_missing() -> str | None:
    """Why the S3 blob backend cannot run here, or None."""
    return _unbuilt(minio_binary(), "minio")


def grpcurl_binary() -> Path:
    """The newest grpcurl, built from its Go module (reflection v1); the PyPI one is 1.8.6."""
    return Path(os.environ.get("GRPCURL_BIN", GRPCURL_BIN))


def grpcurl_missing() -> str | None:
    return _unbuilt(grpcurl_binary(), "grpcurl")


def missing_backends() -> dict[str, str]:
    """Backends that will not run here, with the reason."""
    missing = {}
    if not os.environ.get("MONGODB_URI"):
        missing["mongo"] = "MONGODB_URI not set (a replica set URL; see docs/mongodb.md)"
    if why := _unbuilt(ferretdb_binary(), "ferretdb"):
        missing["ferretdb"] = why
    if not os.environ.get("MONGODB_FAILOVER"):
        missing["mongo_failover"] = (
            "MONGODB_FAILOVER not set (a command that makes MONGODB_URI's replica set elect "
            "another primary; see docs/mongodb.md)"
        )
    return missing


def report_lines() -> list[str]:
    missing = missing_backends()
    ran = [name for name in LACKS if name not in missing]
    lines = [f"metadata store backends under test: {', '.join(ran)}"]
    lines += [f"  NOT run against {name}: {why}" for name, why in missing.items()]
    # How many cases each leaves out is said after collection (tests/left_out.py).
    # Imported here: the blob backends import the storages, and they import this module.
    from tests.contract.blob_backends import blob_report_lines

    return lines + blob_report_lines()


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
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MinIO:
    """A MinIO server on a free loopback port, with its own data folder and credentials."""

    access_key = "asset-test"
    secret_key = "asset-test-secret"
    region = "us-east-1"

    def __init__(self, state: Path) -> None:
        self.data = state / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.console_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point a client (or the server) at this MinIO."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def start(self, timeout: float = 30) -> MinIO:
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.access_key,
            "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
        }
        self.proc = subprocess.Popen(
            [
                str(minio_binary()),
                "server",
                str(self.data),
                "--address",
                f"127.0.0.1:{self.port}",
                "--console-address",
                f"127.0.0.1:{self.console_port}",
                "--quiet",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        ready = f"{self.endpoint}/minio/health/ready"
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"MinIO did not become ready (exit {self.proc.poll()})")
            time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.proc)
