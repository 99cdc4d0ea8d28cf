"""Shared fixtures: a real server process on port 0 and async stubs talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from asset_service.api.wire import MESSAGE_LIMITS
from tests import left_out
from tests.backends import MinIO, report_lines
from tests.contract import s3_helpers
from tests.serverproc import ServerProcess, database_url_for, serving


def pytest_report_header(config: pytest.Config) -> list[str]:
    return report_lines()


@pytest.hookimpl(trylast=True)  # after -k and -m: count only the cases asked for
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    left_out.deselect(config, items)


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    return left_out.report(config, items)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's: a worker has finished
def pytest_testnodedown(node: Any, error: object) -> None:
    left_out.from_worker(node.config, getattr(node, "workeroutput", {}))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = left_out.report(terminalreporter.config)
    if lines:
        terminalreporter.write_sep("-", "backends not run here")
        for line in lines[1:]:
            terminalreporter.write_line(line.strip())


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinIO]:
    """A MinIO server for the session, with the contract's bucket; built by `make minio`."""
    state = tmp_path_factory.mktemp("minio")
    server = MinIO(state).start()
    try:
        # Its own thread and loop: the fixture is first asked for inside a running loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, s3_helpers.create_bucket(server)).result()
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "worker"
    root.mkdir()
    return root


@pytest.fixture
def server(tmp_path: Path, import_root: Path) -> Iterator[ServerProcess]:
    url = database_url_for(tmp_path)
    with serving(ServerProcess(tmp_path / "data", url, import_roots=[import_root])) as proc:
        yield proc


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Starts servers with extra flags (`start(*flags)`, one database for all of them);
    every one is stopped, and its database dropped, at the end."""
    with contextlib.ExitStack() as started:

        def start(*extra_args: str) -> ServerProcess:
            url = database_url_for(tmp_path)
            proc = ServerProcess(tmp_path / "data", url, extra_args=list(extra_args))
            return started.enter_context(serving(proc))

        yield start


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        server.address,
        options=MESSAGE_LIMITS,
    ) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.AssetServiceStub:
    return pb_grpc.AssetServiceStub(channel)
