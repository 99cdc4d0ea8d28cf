"""`asset` over TLS and mTLS, its files and token from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cli_helpers import asset, one_line_error, out
from tests.e2e.security_helpers import SecureFiles, server_process, token_for
from tests.pki import CA
from tests.serverproc import ServerProcess, serving


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """TLS, client certificates required (worker-7's maps to orchestrator), and tokens."""
    base = tmp_path_factory.mktemp("cli-mtls")
    (base / "imports").mkdir()
    servers, clients = CA("server CA"), CA("client CA")
    cert, key = servers.server().write(base, "server")
    servers.write(base / "ca.pem")
    clients.client("worker-7.example").write(base, "worker")
    files = SecureFiles(base).with_tokens({"worker-7.example": ("worker-7", "orchestrator")})
    args = [*files.args, "--tls-cert", str(cert), "--tls-key", str(key)]
    args += ["--tls-client-ca", str(clients.write(base / "clients-ca.pem"))]
    with serving(server_process(base, base / "imports", args)) as server:
        yield server, base


def test_asset_speaks_mtls_with_its_files_from_options_or_variables(
    mtls: tuple[ServerProcess, Path],
) -> None:
    server, base = mtls
    ca, cert, key = base / "ca.pem", base / "worker.crt", base / "worker.key"
    assert cert.exists() and key.exists()
    files = ["--ca-file", str(ca), "--client-cert", str(cert), "--client-key", str(key)]
    made = out(asset(server.address, *files, "pending", "task-tls", "out.txt")).strip()
    assert len(made) == 36
    env = {
        "ASSET_SERVICE_CA_FILE": str(ca),
        "ASSET_SERVICE_CLIENT_CERT": str(cert),
        "ASSET_SERVICE_CLIENT_KEY": str(key),
    }
    shown = out(asset(server.address, "show", made, "--json", env=env))
    assert '"created_by": "worker-7"' in shown
    # Without a client certificate the handshake fails: UNAVAILABLE, exit 24 (a call that
    # gRPC does not retry, so it says so at once).
    refused = asset(server.address, "--ca-file", str(ca), "pending", "task-tls", "x")
    assert "UNAVAILABLE" in one_line_error(refused, 24)
    half = asset(server.address, "--ca-file", str(ca), "--client-cert", str(cert), "ls")
    assert "--client-key" in one_line_error(half, 2)


def test_a_token_file_names_the_principal_over_tls(
    mtls: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, base = mtls
    token = tmp_path / "token"
    token.write_text(token_for("admin") + "\n")
    env = {
        "ASSET_SERVICE_CA_FILE": str(base / "ca.pem"),
        "ASSET_SERVICE_CLIENT_CERT": str(base / "worker.crt"),
        "ASSET_SERVICE_CLIENT_KEY": str(base / "worker.key"),
        "ASSET_SERVICE_TOKEN_FILE": str(token),
    }
    made = out(asset(server.address, "pending", "task-tls", "x.txt", env=env)).strip()
    assert '"created_by": "admin-1"' in out(asset(server.address, "show", made, "--json", env=env))
    # --token on the command line wins over the file's variable...
    other = asset(server.address, "--token", "not-a-token", "ls", env=env)
    assert "UNAUTHENTICATED" in one_line_error(other, 26)
    # ...but both on the command line, or both as variables, is a usage error.
    both = asset(server.address, "--token", "t", "--token-file", str(token), "ls", env=env)
    assert "--token or --token-file" in one_line_error(both, 2)
    twice = asset(server.address, "ls", env={**env, "ASSET_SERVICE_TOKEN": "t"})
    assert "--token or --token-file" in one_line_error(twice, 2)
