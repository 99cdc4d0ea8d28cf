"""Shared fixtures: a real server process on port 0 and async stubs talking to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from asset_service._proto.asset.v1 import asset_service_pb2_grpc as pb_grpc
from tests.backends import report_lines
from tests.serverproc import ServerProcess, database_url_for, drop_database_of


def pytest_report_header(config: pytest.Config) -> list[str]:
    return report_lines()


@pytest.fixture
def import_root(tmp_path: Path) -> Path:
    root = tmp_path / "worker"
    root.mkdir()
    return root


@pytest.fixture
def server(tmp_path: Path, import_root: Path) -> Iterator[ServerProcess]:
    url = database_url_for(tmp_path)
    proc = ServerProcess(tmp_path / "data", url, import_roots=[import_root]).start()
    try:
        yield proc
    finally:
        proc.stop()
        drop_database_of(url)


@pytest.fixture
async def channel(server: ServerProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        server.address,
        options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.max_send_message_length", 8 * 1024 * 1024),
        ],
    ) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.AssetServiceStub:
    return pb_grpc.AssetServiceStub(channel)
