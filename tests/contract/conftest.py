"""Backends for the MetadataStore contract: sqlite always, MongoDB and FerretDB when present."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient

from asset_service.domain.ports import MetadataStore
from asset_service.store.mongo import MongoStore
from asset_service.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
FERRETDB_VERSION = "v1.24.0"
FERRETDB_BIN = REPO / ".tools" / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"


@dataclass
class Backend:
    name: str
    store: MetadataStore
    # False: a wire-compatible server without replica set (no transactions/change streams).
    replica_set: bool = True

    def require_replica_set(self, what: str) -> None:
        if not self.replica_set:
            pytest.skip(
                f"{self.name} has no replica set ({what}); this case runs only against a real "
                "MongoDB replica set (set MONGODB_URI, see docs/mongodb.md)"
            )


def _fresh_database(url: str) -> tuple[str, str]:
    name = f"asset_contract_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}")), name


async def _drop(url: str, name: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        url, serverSelectionTimeoutMS=3000
    )
    try:
        await client.drop_database(name)
    finally:
        await client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ferretdb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FerretDB (SQLite backend) process for the session; built by `make ferretdb`."""
    binary = Path(os.environ.get("FERRETDB_BIN", FERRETDB_BIN))
    if not binary.is_file():
        pytest.skip(f"FerretDB not built ({binary} missing): run `make ferretdb`")
    state = tmp_path_factory.mktemp("ferretdb")
    (state / "data").mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(binary),
            "--handler=sqlite",
            f"--sqlite-url=file:{state / 'data'}/",
            f"--state-dir={state}",
            f"--listen-addr=127.0.0.1:{port}",
            "--debug-addr=-",
            "--telemetry=disable",
            "--log-level=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"FerretDB did not start (exit code {proc.poll()})")
                time.sleep(0.05)
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(params=["sqlite", "mongo", "ferretdb"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every MetadataStore implementation, opened on empty storage, closed (and dropped) after."""
    kind: str = request.param
    if kind == "sqlite":
        sqlite = SqliteStore(tmp_path / "contract.db")
        await sqlite.open()
        try:
            yield Backend("sqlite", sqlite)
        finally:
            await sqlite.close()
        return
    if kind == "mongo":
        base = os.environ.get("MONGODB_URI")
        if not base:
            pytest.skip("MONGODB_URI not set (a replica set URL, see docs/mongodb.md)")
        replica_set = True
    else:
        base = request.getfixturevalue("ferretdb_url")
        replica_set = False
    url, name = _fresh_database(base)
    store = MongoStore(url, allow_standalone=not replica_set)
    await store.open()
    try:
        yield Backend(kind, store, replica_set=replica_set)
    finally:
        await store.close()
        await _drop(base, name)
