"""MetadataStore contract backends: memory and sqlite always, MongoDB/FerretDB when present."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from asset_service.domain.ports import MetadataStore
from asset_service.store.memory import MemoryStore
from asset_service.store.mongo import MongoStore
from asset_service.store.sqlite import SqliteStore
from tests.backends import LACKS, FerretDB


@dataclass
class Backend:
    name: str
    store: MetadataStore
    lacks: dict[str, str] = field(default_factory=dict)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One case per backend; those a backend here cannot run are deselected and counted
    (tests/left_out.py), never skipped."""
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", list(LACKS), indirect=True)


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


@dataclass
class FreshDatabase:
    """A MongoStore on a database of its own, and a plain client's handle on that database
    to change it behind the store's back (as an operator or an older release would)."""

    url: str
    db: AsyncDatabase[dict[str, object]]
    store: MongoStore

    async def reopen(self) -> MongoStore:
        """Close the store and open another on the same database, as a restart does."""
        await self.store.close()
        self.store = MongoStore(self.url, allow_standalone=True)
        await self.store.open()
        return self.store


@asynccontextmanager
async def fresh_ferretdb(ferretdb_url: str) -> AsyncIterator[FreshDatabase]:
    """A fresh database on the session's FerretDB with a store open on it; dropped after."""
    url, name = _fresh_database(ferretdb_url)
    store = MongoStore(url, allow_standalone=True)
    await store.open()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        ferretdb_url, serverSelectionTimeoutMS=3000
    )
    fresh = FreshDatabase(url, client[name], store)
    try:
        yield fresh
    finally:
        await client.close()
        await fresh.store.close()
        await _drop(ferretdb_url, name)


@pytest.fixture(scope="session")
def ferretdb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FerretDB (SQLite backend) process for the session; built by `make ferretdb`."""
    state = tmp_path_factory.mktemp("ferretdb")
    ferret = FerretDB(state).start()
    try:
        yield ferret.url
    finally:
        ferret.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A fresh database on MONGODB_URI's replica set (for `requires("mongo")` tests): its
    URL; dropped afterwards."""
    base = os.environ["MONGODB_URI"]
    url, name = _fresh_database(base)
    yield url
    await _drop(base, name)


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every MetadataStore implementation, opened on empty storage, closed (and dropped) after."""
    kind: str = request.param
    if kind in ("memory", "sqlite"):
        local = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "contract.db")
        await local.open()
        try:
            yield Backend(kind, local)
        finally:
            await local.close()
        return
    base = os.environ["MONGODB_URI"] if kind == "mongo" else request.getfixturevalue("ferretdb_url")
    lacks = LACKS[kind]
    url, name = _fresh_database(base)
    store = MongoStore(url, allow_standalone=bool(lacks))
    await store.open()
    try:
        yield Backend(kind, store, lacks)
    finally:
        await store.close()
        await _drop(base, name)
