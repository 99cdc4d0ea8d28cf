"""`asset-service health`: ask a server's grpc.health.v1; exit 0 if SERVING (container probes)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

PROG = "asset-service health"
PREFIX = "ASSET_SERVICE_"
READINESS = "asset.v1.AssetService"  # probes.READINESS, without importing the stubs first
DEFAULT_PORT = "50051"
SERVING, NOT_SERVING = 0, 1
# Listen addresses that mean "every interface": a probe on the same host dials loopback.
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


class _FromEnv(str):
    """A default read from a variable: a complaint about it names the variable."""

    variable = ""


def _seconds(text: str) -> float:
    source = f" (from {text.variable})" if isinstance(text, _FromEnv) else ""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}{source} is not a number of seconds greater than 0, e.g. 5 or 0.5"
        )
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, like the server's own options."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def default_address(env: Mapping[str, str]) -> str:
    """The server's --listen (ASSET_SERVICE_LISTEN) as a probe on its host dials it."""
    listen = env.get(PREFIX + "LISTEN", "")
    if not listen:
        return f"127.0.0.1:{DEFAULT_PORT}"
    host, _, port = listen.rpartition(":")
    return f"{WILDCARDS.get(host, host)}:{port or DEFAULT_PORT}"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def default(name: str, fallback: str) -> str:
        raw = env.get(PREFIX + name)
        if raw is None:
            return fallback
        value = _FromEnv(raw)
        value.variable = PREFIX + name
        return value

    parser = _Parser(
        prog=PROG,
        description=(
            "Ask a running asset-service for its health (grpc.health.v1 Check), as a container "
            "HEALTHCHECK or a Kubernetes exec probe does: exit 0 when it answers SERVING; 1 "
            "when it answers NOT_SERVING, does not know the service, or cannot be reached in "
            "time, with one line on stderr saying which. Run beside the server, it needs no "
            "flags: the defaults come from the server's own ASSET_SERVICE_* variables."
        ),
        epilog=(
            "Every option can also be set by the environment variable in brackets; a flag "
            "wins. Readiness (asset.v1.AssetService) is SERVING while the database and "
            'storage answer and no drain has begun; liveness ("") while the process serves '
            "calls (README: Probes)."
        ),
    )
    parser.add_argument(
        "--address",
        default=default("HEALTH_ADDRESS", default_address(env)),
        metavar="HOST:PORT",
        help="the server to ask (default: ASSET_SERVICE_LISTEN, an any-interface host "
        "replaced by loopback, here %(default)s) [ASSET_SERVICE_HEALTH_ADDRESS]",
    )
    parser.add_argument(
        "--service",
        default=default("HEALTH_SERVICE", READINESS),
        metavar="NAME",
        help="the name to ask about: asset.v1.AssetService for readiness (the default), '' "
        "for liveness [ASSET_SERVICE_HEALTH_SERVICE]",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=default("HEALTH_TIMEOUT", "5"),
        metavar="SECONDS",
        help="how long to wait for the answer, connecting included (default: 5) "
        "[ASSET_SERVICE_HEALTH_TIMEOUT]",
    )
    parser.add_argument(
        "--tls-ca",
        default=default("HEALTH_TLS_CA", env.get(PREFIX + "TLS_CERT", "")),
        metavar="FILE",
        help="PEM certificate(s) to trust, and speak TLS (default: the server's own "
        "--tls-cert, ASSET_SERVICE_TLS_CERT, trusted as it is; none: plaintext) "
        "[ASSET_SERVICE_HEALTH_TLS_CA]",
    )
    parser.add_argument(
        "--tls-server-name",
        default=default("HEALTH_TLS_SERVER_NAME", ""),
        metavar="NAME",
        help="the name the server's certificate must hold (default: the first DNS name of "
        "the certificate when it is the server's own, else the address's host) "
        "[ASSET_SERVICE_HEALTH_TLS_SERVER_NAME]",
    )
    parser.add_argument(
        "--tls-cert",
        default=default("HEALTH_TLS_CERT", ""),
        metavar="FILE",
        help="PEM client certificate, for a server that requires one (--tls-client-ca) "
        "[ASSET_SERVICE_HEALTH_TLS_CERT]",
    )
    parser.add_argument(
        "--tls-key",
        default=default("HEALTH_TLS_KEY", ""),
        metavar="FILE",
        help="PEM private key of --tls-cert [ASSET_SERVICE_HEALTH_TLS_KEY]",
    )
    return parser


@dataclass(frozen=True)
class Probe:
    address: str
    service: str
    timeout: float
    root_certificates: bytes | None = None
    server_name: str = ""
    client_cert: bytes | None = None
    client_key: bytes | None = None


def _read(parser: argparse.ArgumentParser, flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
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
    parser = build_parser(env)
    args = parser.parse_args(argv)
    host, sep, port = args.address.rpartition(":")
    if not sep or not host or not port.isdigit():
        parser.error(f"--address {args.address!r} is not HOST:PORT, e.g. 127.0.0.1:50051")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together: give both, or neither")
    if (args.tls_cert or args.tls_server_name) and not args.tls_ca:
        parser.error("--tls-cert and --tls-server-name need TLS: give --tls-ca too")
    if not args.tls_ca:
        return Probe(args.address, args.service, args.timeout)
    roots = _read(parser, "--tls-ca", args.tls_ca)
    server_name = args.tls_server_name
    if not server_name and args.tls_ca == env.get(PREFIX + "TLS_CERT"):
        # The server's own certificate, trusted as it is: the name it holds is the one
        # to expect, whatever address reaches it.
        server_name = _first_dns_name(roots)
    return Probe(
        args.address,
        args.service,
        args.timeout,
        roots,
        server_name,
        _read(parser, "--tls-cert", args.tls_cert) if args.tls_cert else None,
        _read(parser, "--tls-key", args.tls_key) if args.tls_key else None,
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
