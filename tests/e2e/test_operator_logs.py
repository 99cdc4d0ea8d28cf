"""What the server's own log tells an operator about trouble on its side, access log or not."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import StartServer
from tests.e2e.helpers import MiB, pattern_chunks, upload_sync
from tests.serverproc import ServerProcess, serving
from tests.tmpfs import mounted


async def test_a_full_disk_is_a_warning_in_the_log_even_without_the_access_log(
    tmp_path: Path,
) -> None:
    """An upload refused because the storage's disk was full left no line at all with
    --no-access-log (and only an INFO access line without it): the operator, who alone can
    free the space, learnt of it from clients or the metrics."""
    with mounted(tmp_path / "disk", "4m") as disk:
        root = disk / "data"
        server = ServerProcess(
            root,
            f"sqlite:///{root / 'assets.db'}",
            extra_args=["--no-access-log", "--disk-reserve-bytes", "0"],
        )
        with serving(server):
            with pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(
                    upload_sync, server.address, pattern_chunks(8 * MiB), label="big.bin"
                )
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            deadline = time.monotonic() + 5  # the server logs just after it answers
            while not _full_warnings(server):
                assert time.monotonic() < deadline, "".join(server.log)
                await asyncio.sleep(0.05)
        warnings = _full_warnings(server)
        assert len(warnings) == 1, "".join(server.log)
        assert "UploadAsset refused: storage is full" in warnings[0]
        assert "No space left on device" in warnings[0]


def _full_warnings(server: ServerProcess) -> list[str]:
    return [line for line in server.log if " WARNING " in line and "storage is full" in line]


async def test_sighup_without_files_to_reload_says_so(start_server: StartServer) -> None:
    """SIGHUP re-reads the security files; a server without any said nothing at all, so the
    operator could not tell a reload that did nothing from a signal that never arrived."""
    server = start_server()
    server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while not any("SIGHUP" in line for line in server.log):
        assert time.monotonic() < deadline, "".join(server.log)
        await asyncio.sleep(0.05)
    assert server.proc.poll() is None  # type: ignore[union-attr]
    (line,) = [line for line in server.log if "SIGHUP" in line]
    assert "no tokens, token secret or TLS files to re-read" in line


def test_the_start_line_names_the_sqlite_file_opened(tmp_path: Path) -> None:
    """sqlite:///srv/assets.db names /srv/assets.db (sqlite_path), where SQLAlchemy would
    read srv/assets.db; the start line echoed the URL, so an operator who meant a relative
    path could not see from it which file the server had opened."""
    database = tmp_path / "db" / "assets.db"
    url = f"sqlite://{database}"  # three slashes: the form read both ways
    with serving(ServerProcess(tmp_path / "data", url)) as server:
        (line,) = [line for line in server.log if "asset-service listening on" in line]
    assert f"database {database} (SQLite))" in line, line


def test_a_variable_that_is_no_setting_is_a_warning_naming_the_likely_one(
    tmp_path: Path,
) -> None:
    """ASSET_SERVICE_SHUTDOWN_GRACE_SECONDS (the setting's field name, not its variable)
    was ignored in silence: the server drained for 10 s where 30 were meant. The clients'
    and the probe's variables, set beside the server in one container, say nothing."""
    env = {
        "ASSET_SERVICE_SHUTDOWN_GRACE_SECONDS": "30",
        "ASSET_SERVICE_ADDR": "127.0.0.1:1",
        "ASSET_SERVICE_HEALTH_TIMEOUT": "3s",
    }
    with serving(ServerProcess(tmp_path / "data", "memory://", env=env)) as server:
        warned = [line for line in server.log if "is no setting" in line]
    assert len(warned) == 1, "".join(server.log)
    assert " WARNING " in warned[0]
    assert (
        "ASSET_SERVICE_SHUTDOWN_GRACE_SECONDS is set but is no setting of asset-service "
        "(ignored); did you mean ASSET_SERVICE_SHUTDOWN_GRACE?"
    ) in warned[0]
