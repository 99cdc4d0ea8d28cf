"""End to end: `asset-service health` against the real server: ready, not ready, alive, gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.security_helpers import SecureFiles
from tests.pki import CA
from tests.serverproc import ServerProcess, serving

READINESS = "asset.v1.AssetService"


def health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a container's HEALTHCHECK runs it (no ASSET_SERVICE_* but `env`)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASSET_SERVICE_")}
    return subprocess.run(
        [sys.executable, "-m", "asset_service", "health", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_for_exit_status(want: int, *args: str, within: float = 15.0) -> str:
    """Ask until the command exits `want`; the line it printed then."""
    deadline = time.monotonic() + within
    while True:
        done = health(*args)
        if done.returncode == want:
            return done.stdout + done.stderr
        assert time.monotonic() < deadline, f"still exit {done.returncode}: {done.stderr}"
        time.sleep(0.1)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose database lies outside its storage root, checked every 0.2 s."""
    (tmp_path / "db").mkdir()
    with serving(
        ServerProcess(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'db' / 'assets.db'}",
            extra_args=["--health-interval", "0.2"],
        )
    ) as server:
        yield server


def test_a_serving_server_exits_zero_for_readiness_and_liveness(watched: ServerProcess) -> None:
    ready = health("--address", watched.address)
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout == f"readiness ({READINESS}) at {watched.address}: SERVING\n"
    alive = health("--address", watched.address, "--service", "")
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout == f'liveness ("") at {watched.address}: SERVING\n'


def test_database_gone_is_not_ready_but_alive_until_it_is_back(
    watched: ServerProcess, tmp_path: Path
) -> None:
    db = tmp_path / "db" / "assets.db"
    db.rename(tmp_path / "db" / "moved-away.db")
    line = wait_for_exit_status(1, "--address", watched.address)
    assert line == f"readiness ({READINESS}) at {watched.address}: NOT_SERVING\n"
    # The process is fine: a liveness probe that failed now would restart it for nothing.
    alive = health("--address", watched.address, "--service", "")
    assert alive.returncode == 0, alive.stderr
    assert "the database check fails" in "".join(watched.log)

    (tmp_path / "db" / "moved-away.db").rename(db)
    wait_for_exit_status(0, "--address", watched.address)
    assert "the database check passes again" in "".join(watched.log)


def test_storage_root_gone_is_not_ready_but_alive_until_it_is_back(
    watched: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "data").rename(tmp_path / "data-moved")
    wait_for_exit_status(1, "--address", watched.address)
    assert health("--address", watched.address, "--service", "").returncode == 0
    assert "the storage check fails" in "".join(watched.log)
    (tmp_path / "data-moved").rename(tmp_path / "data")
    wait_for_exit_status(0, "--address", watched.address)


def test_an_unreachable_address_exits_one_with_one_line() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = health("--address", f"127.0.0.1:{port}", "--timeout", "3")
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"readiness ({READINESS}) at 127.0.0.1:{port}: unreachable: ")
    assert "Connection refused" in line
    assert time.monotonic() - started < 10


def test_an_unknown_service_name_exits_one_naming_the_known_ones(server: ServerProcess) -> None:
    done = health("--address", server.address, "--service", "asset.v1.Nope")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"service 'asset.v1.Nope' at {server.address}: the server has no such service "
        f"(readiness is {READINESS}, liveness is '')"
    ]


def test_in_a_tls_server_s_environment_it_needs_no_flags(tmp_path: Path) -> None:
    """As the Dockerfile's HEALTHCHECK runs it: the server's ASSET_SERVICE_LISTEN (any
    interface) and ASSET_SERVICE_TLS_CERT, a certificate naming only a DNS name."""
    ca = CA("deployment CA")
    cert, key = ca.server("asset.internal", dns_names=("asset.internal",)).write(tmp_path, "s")
    with serving(
        ServerProcess(
            tmp_path / "data",
            "memory://",
            extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
        )
    ) as server:
        env = {
            "ASSET_SERVICE_LISTEN": f"0.0.0.0:{server.port}",
            "ASSET_SERVICE_TLS_CERT": str(cert),
        }
        done = health(env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"readiness ({READINESS}) at 127.0.0.1:{server.port}: SERVING\n"
        # Trusting the CA instead, the name to expect must be given.
        ca_file = ca.write(tmp_path / "ca.pem")
        mismatch = health("--address", server.address, "--tls-ca", str(ca_file))
        assert mismatch.returncode == 1 and len(mismatch.stderr.splitlines()) == 1
        named = health(
            "--address",
            server.address,
            "--tls-ca",
            str(ca_file),
            "--tls-server-name",
            "asset.internal",
        )
        assert named.returncode == 0, named.stderr
        plaintext = health("--address", server.address)
        assert plaintext.returncode == 1 and "unreachable" in plaintext.stderr


def test_an_mtls_server_answers_a_probe_with_a_client_certificate(tmp_path: Path) -> None:
    ca, clients = CA("server CA"), CA("client CA")
    cert, key = ca.server().write(tmp_path, "server")
    client_cert, client_key = clients.client("probe").write(tmp_path, "probe")
    client_ca = clients.write(tmp_path / "clients-ca.pem")
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(client_ca)]
    args += SecureFiles(tmp_path).with_tokens().args
    with serving(ServerProcess(tmp_path / "data", "memory://", extra_args=args)) as server:
        env = {"ASSET_SERVICE_TLS_CERT": str(cert)}
        without = health("--address", server.address, env=env)
        assert without.returncode == 1 and len(without.stderr.splitlines()) == 1
        env |= {
            "ASSET_SERVICE_HEALTH_TLS_CERT": str(client_cert),
            "ASSET_SERVICE_HEALTH_TLS_KEY": str(client_key),
        }
        done = health("--address", server.address, env=env)
        assert done.returncode == 0, done.stderr
