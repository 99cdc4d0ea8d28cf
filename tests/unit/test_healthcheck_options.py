"""`asset-service health` options: defaults from the server's variables, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from asset_service import healthcheck
from asset_service.healthcheck import TABLE, build_parser, default_address, load_probe
from tests.pki import CA

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("", "127.0.0.1:50051"),
        ("0.0.0.0:7000", "127.0.0.1:7000"),
        ("[::]:7000", "[::1]:7000"),
        (":7000", "127.0.0.1:7000"),
        ("10.1.2.3:7000", "10.1.2.3:7000"),
    ],
)
def test_the_address_is_the_servers_listen_dialled_on_loopback(listen: str, address: str) -> None:
    env = {"ASSET_SERVICE_LISTEN": listen} if listen else {}
    assert default_address(env) == address
    assert load_probe([], env).address == address


def test_every_option_has_its_variable_in_help_and_the_readme() -> None:
    """The README's block is generated from the table (scripts/gen_settings_doc.py --check)."""
    readme = README.read_text()
    block = readme.split("<!-- health-settings:begin", 1)[1].split("<!-- health-settings:end", 1)[0]
    help_text = build_parser().format_help()
    for s in TABLE.settings:
        assert s.env == "ASSET_SERVICE_HEALTH_" + s.flag[2:].upper().replace("-", "_")
        assert f"[{s.env};" in " ".join(help_text.split()), s.flag
        assert f"| `{s.flag} " in block and f"`{s.env}`" in block, s.flag


def test_variables_set_every_option_and_flags_win(tmp_path: Path) -> None:
    ca = CA()
    ca_file = ca.write(tmp_path / "ca.pem")
    cert, key = ca.client("probe").write(tmp_path, "probe")
    env = {
        "ASSET_SERVICE_HEALTH_ADDRESS": "db-host:1234",
        "ASSET_SERVICE_HEALTH_SERVICE": "",
        "ASSET_SERVICE_HEALTH_TIMEOUT": "500ms",
        "ASSET_SERVICE_HEALTH_TLS_CA": str(ca_file),
        "ASSET_SERVICE_HEALTH_TLS_SERVER_NAME": "asset.internal",
        "ASSET_SERVICE_HEALTH_TLS_CERT": str(cert),
        "ASSET_SERVICE_HEALTH_TLS_KEY": str(key),
    }
    probe = load_probe([], env)
    assert (probe.address, probe.service, probe.timeout) == ("db-host:1234", "", 0.5)
    assert probe.root_certificates == ca.pem and probe.server_name == "asset.internal"
    # The server's own certificate is not the default once a CA is given.
    assert load_probe([], {**env, "ASSET_SERVICE_TLS_CERT": "/nonexistent"}).root_certificates
    assert probe.client_cert == cert.read_bytes() and probe.client_key == key.read_bytes()
    flagged = load_probe(["--address", "other:1", "--timeout", "2s"], env)
    assert (flagged.address, flagged.timeout) == ("other:1", 2.0)


def test_the_servers_own_certificate_is_trusted_under_its_own_name(tmp_path: Path) -> None:
    cert, _ = CA().server("x", dns_names=("asset.internal", "b.internal")).write(tmp_path, "s")
    probe = load_probe([], {"ASSET_SERVICE_TLS_CERT": str(cert)})
    assert probe.root_certificates == cert.read_bytes()
    assert probe.server_name == "asset.internal"
    assert load_probe([], {}).root_certificates is None  # no TLS configured: plaintext


DURATIONS = "accepted: a duration like 10s, 5m, 1h, 250ms, 1h30m or 1.5 (seconds), above 0"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            [],
            {"ASSET_SERVICE_HEALTH_TIMEOUT": "5 seconds"},
            "ASSET_SERVICE_HEALTH_TIMEOUT (the variable of --timeout): '5 seconds' is not a "
            f"duration; {DURATIONS}",
        ),
        (
            ["--timeout", "0"],
            {},
            f"--timeout (or ASSET_SERVICE_HEALTH_TIMEOUT): '0' is not above 0; {DURATIONS}",
        ),
        (
            [],
            {"ASSET_SERVICE_HEALTH_ADDRESS": "localhost"},
            "ASSET_SERVICE_HEALTH_ADDRESS (the variable of --address): 'localhost' is not "
            "HOST:PORT; accepted: HOST:PORT, [::1]:PORT or unix:PATH",
        ),
        (
            ["--tls-ca", "/nonexistent/ca.pem"],
            {},
            "cannot read --tls-ca /nonexistent/ca.pem: No such file or directory (see --help)",
        ),
        (
            [],
            # The file came from the server's variable: a --tls-ca nobody gave was blamed.
            {"ASSET_SERVICE_TLS_CERT": "/nonexistent/server.pem"},
            "cannot read ASSET_SERVICE_TLS_CERT (trusted without --tls-ca) "
            "/nonexistent/server.pem: No such file or directory",
        ),
        (
            ["--tls-ca", "/dev/null", "--tls-cert", "/dev/null"],
            {},
            "--tls-cert and --tls-key go together: give both, or neither (see --help)",
        ),
        (
            ["--tls-server-name", "x"],
            {},
            "--tls-cert and --tls-server-name need TLS: give --tls-ca too (see --help)",
        ),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        healthcheck.main(argv, env)
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"asset-service health: error: {message}")
