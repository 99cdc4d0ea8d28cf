"""Fixtures of the end-to-end tests that several modules share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from asset_client import AssetClient

from tests.e2e import packed_cli
from tests.e2e.helpers import AsyncDriver
from tests.serverproc import ServerProcess


@pytest.fixture(scope="session")
def packed() -> Iterator[packed_cli.PackedCli]:
    """The client wheel with [cli] in a clean venv (built once per session), in a folder
    under /tmp that the worker uid can enter (pytest's own tmp folders are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the worker as another uid (setpriv)")
    root = Path(tempfile.mkdtemp(prefix="asset-packed-cli-"))
    try:
        yield packed_cli.build(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sync", "asyncio"])
def client_of(request: pytest.FixtureRequest) -> Iterator[Callable[[ServerProcess], AssetClient]]:
    """Connects the client under test (AssetClient, or AsyncAssetClient behind the same
    blocking calls) to a server; each one is closed at the end."""
    opened: list[Any] = []

    def connect(server: ServerProcess) -> AssetClient:
        if request.param == "sync":
            c: Any = AssetClient(server.address, timeout=15)
        else:
            c = AsyncDriver(server.address)
        opened.append(c)
        return cast(AssetClient, c)

    yield connect
    for c in opened:
        c.close()


@pytest.fixture
def client(client_of: Callable[[ServerProcess], AssetClient], server: ServerProcess) -> AssetClient:
    """The client under test (both kinds, see client_of) on the test's server."""
    return client_of(server)


@pytest.fixture
def helper(server: ServerProcess) -> Iterator[AssetClient]:
    """A blocking client for setup and side effects, apart from the client under test."""
    with AssetClient(server.address, timeout=15) as c:
        yield c
