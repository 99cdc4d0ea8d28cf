"""`asset-service health`: ask a server's grpc.health.v1; exit 0 if SERVING (container probes)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from asset_service.options import (
    ADDRESS,
    DURATION,
    FILE,
    TEXT,
    Kind,
    OneLineParser,
    Table,
    setting,
)

PROG = "asset-service health"
SERVER_PREFIX = "ASSET_SERVICE_"
READINESS = "asset.v1.AssetService"  # probes.READINESS, without importing the stubs first
DEFAULT_PORT = "50051"
SERVING, NOT_SERVING = 0, 1
# Listen addresses that mean "every interface": a probe on the same host dials loopback.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}
# Empty: the server's own --listen (default_address).
DIAL: Kind[str] = dataclasses.replace(
    ADDRESS,
    parse=lambda text: ADDRESS.parse(text) if text.strip() else "",
    forms="HOST:PORT, [::1]:PORT or unix:PATH",
)


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's options, declared once like the server's (config/)."""

    address: str = setting(
        DIAL,
        "",
        "the server to ask",
        group="probe",
        default_doc="ASSET_SERVICE_LISTEN, an any-interface host dialled on loopback; else "
        "127.0.0.1:50051",
    )
    service: str = setting(
        TEXT,
        READINESS,
        "the name to ask about: asset.v1.AssetService for readiness, '' for liveness",
        group="probe",
    )
    timeout: float = setting(
        DURATION.where(lambda seconds: seconds > 0, "above 0"),
        "5s",
        "how long to wait for the answer, connecting included",
        group="probe",
    )
    tls_ca: Path | None = setting(
        FILE,
        "",
        "PEM certificate(s) to trust, and speak TLS (none: plaintext)",
        group="probe",
        default_doc="ASSET_SERVICE_TLS_CERT: the server's own certificate, trusted as it is",
    )
    tls_server_name: str = setting(
        TEXT,
        "",
        "the name the server's certificate must hold",
        group="probe",
        default_doc="with the server's own certificate, its first DNS name; else the "
        "address's host",
    )
    tls_cert: Path | None = setting(
        FILE,
        "",
        "PEM client certificate, for a server that requires one (--tls-client-ca)",
        group="probe",
    )
    tls_key: Path | None = setting(FILE, "", "PEM private key of --tls-cert", group="probe")


TABLE = Table(
    ProbeSettings,
    env_prefix=SERVER_PREFIX + "HEALTH_",
    groups={"probe": "what to ask, and how to reach it"},
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Ask a running asset-service for its health (grpc.health.v1 Check), as a container "
            "HEALTHCHECK or a Kubernetes exec probe does: exit 0 when it answers SERVING; 1 "
            "when it answers NOT_SERVING, does not know the service, or cannot be reached in "
            "time, with one line on stderr saying which; 2 for a bad option. Run beside the "
            "server, it needs no flags: the defaults come from the server's own "
            "ASSET_SERVICE_* variables."
        ),
        epilog=(
            "Every option can also be set by the environment variable in brackets; a flag "
            "wins. Readiness (asset.v1.AssetService) is SERVING while the database and "
            'storage answer and no drain has begun; liveness ("") while the process serves '
            "calls (README: Probes)."
        ),
    )
    TABLE.add_arguments(parser)
    return parser


def default_address(env: Mapping[str, str]) -> str:
    """The server's --listen (ASSET_SERVICE_LISTEN) as a probe on its host dials it."""
    listen = env.get(SERVER_PREFIX + "LISTEN", "").strip()
    if not listen:
        return f"127.0.0.1:{DEFAULT_PORT}"
    if listen.startswith("unix"):
        return listen
    host, _, port = listen.rpartition(":")
    return f"{WILDCARDS.get(host, host)}:{port or DEFAULT_PORT}"


@dataclass(frozen=True)
class Probe:
    address: str
    service: str
    timeout: float
    root_certificates: bytes | None = None
    server_name: str = ""
    client_cert: bytes | None = None
    client_key: bytes | None = None


def _read(parser: argparse.ArgumentParser, flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        parser.error(f"cannot read {flag} {path}: {exc.strerror}")


def _first_dns_name(pem: bytes) -> str:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ""
    dns = names.get_values_for_type(x509.DNSName)
    return dns[0] if dns else ""


def load_probe(argv: Sequence[str], env: Mapping[str, str]) -> Probe:
    parser = build_parser()
    given = TABLE.load(parser, argv, env).settings
    address = given.address or default_address(env)
    if (given.tls_cert is None) != (given.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both, or neither")
    server_cert = env.get(SERVER_PREFIX + "TLS_CERT", "")
    ca = given.tls_ca or (Path(server_cert).expanduser().resolve() if server_cert else None)
    if ca is None:
        if given.tls_cert or given.tls_server_name:
            parser.error("--tls-cert and --tls-server-name need TLS: give --tls-ca too")
        return Probe(address, given.service, given.timeout)
    # Named as given: without --tls-ca the file is the server's, from its own variable.
    source = "--tls-ca" if given.tls_ca else f"{SERVER_PREFIX}TLS_CERT (trusted without --tls-ca)"
    roots = _read(parser, source, ca)
    server_name = given.tls_server_name
    if not server_name and given.tls_ca is None:
        # The server's own certificate, trusted as it is: the name it holds is the one
        # to expect, whatever address reaches it.
        server_name = _first_dns_name(roots)
    return Probe(
        address,
        given.service,
        given.timeout,
        roots,
        server_name,
        _read(parser, "--tls-cert", given.tls_cert) if given.tls_cert else None,
        _read(parser, "--tls-key", given.tls_key) if given.tls_key else None,
    )


def _label(service: str) -> str:
    if service == "":
        return 'liveness ("")'
    if service == READINESS:
        return f"readiness ({READINESS})"
    return f"service {service!r}"


def check(probe: Probe) -> tuple[int, str]:
    """The exit status and the line to print."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options: list[tuple[str, str]] = []
    if probe.root_certificates is None:
        channel = grpc.insecure_channel(probe.address)
    else:
        credentials = grpc.ssl_channel_credentials(
            probe.root_certificates, probe.client_key, probe.client_cert
        )
        if probe.server_name:
            options.append(("grpc.ssl_target_name_override", probe.server_name))
        channel = grpc.secure_channel(probe.address, credentials, options)
    where = f"{_label(probe.service)} at {probe.address}"
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout
        )
    except grpc.RpcError as exc:
        code, details = exc.code(), " ".join(str(exc.details() or "").split())
        if code == grpc.StatusCode.NOT_FOUND:
            return NOT_SERVING, (
                f"{where}: the server has no such service (readiness is {READINESS}, "
                "liveness is '')"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return NOT_SERVING, f"{where}: no answer within {probe.timeout:g}s"
        if code == grpc.StatusCode.UNAVAILABLE:
            return NOT_SERVING, f"{where}: unreachable: {details}"
        return NOT_SERVING, f"{where}: {code.name}: {details}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (SERVING if status == "SERVING" else NOT_SERVING), f"{where}: {status}"


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    status, line = check(load_probe(argv, env))
    print(line, file=sys.stdout if status == SERVING else sys.stderr)
    return status
