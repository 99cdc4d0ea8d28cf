"""The client's channel: where, how long, which credentials, and which calls gRPC retries."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

# Settings a client takes from the environment where its caller gives no argument; the
# same names as the Go and TypeScript clients (and their test suites) read.
ENV_ADDR = "ASSET_SERVICE_ADDR"
ENV_TOKEN = "ASSET_SERVICE_TOKEN"
ENV_TOKEN_FILE = "ASSET_SERVICE_TOKEN_FILE"
ENV_CA_FILE = "ASSET_SERVICE_CA_FILE"
ENV_CLIENT_CERT = "ASSET_SERVICE_CLIENT_CERT"
ENV_CLIENT_KEY = "ASSET_SERVICE_CLIENT_KEY"
ENV_TIMEOUT = "ASSET_SERVICE_TIMEOUT"
ENV_TLS = "ASSET_SERVICE_TLS"  # 1/true/yes/on: TLS with the system's roots (the CLI's --tls)

# The words a boolean variable takes (click's BOOL and the Go client's, to agree with both).
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})

# An argument not given (None is a value: timeout=None means no deadline).
UNSET: Any = object()

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
# The server's limit (asset_service/api/wire.py; tests/unit/test_edge.py checks they agree).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

SERVICE = "asset.v1.AssetService"

# The calls gRPC retries after UNAVAILABLE (the server restarting, a connection dropped,
# its database unreachable), and why repeating each is safe even if the first attempt did
# its work and only the answer was lost. A stream is retried only until its first message
# arrives (gRPC commits the call then); a watch cut later is resumed by the client from
# the last revision it delivered, which is not a retry of the same request.
RETRIED: Mapping[str, str] = {
    "GetAsset": "a read",
    "BatchGetAssets": "a read",
    "ListAssets": "a read",
    "WatchAsset": "a read, until its first event",
    "ReadAsset": "a read, until its first chunk",
    "QueryUpload": "a read",
    "GetManifest": "writes the same manifest again",
    "RenewLease": "sets the lease to now + lease_seconds again",
    "FulfillAsset": "the server answers an identical fulfilment with the same asset",
    "FailAsset": "the server answers an identical failure (same reason) with the same asset",
    "MintTaskToken": "signs another token; its inputs' task holds are placed again (same owner)",
    "SetExpiry": "sets the same expiry again (ttl_seconds from the retry's now)",
    "PlaceHold": "places the same owner's hold again, replacing it",
    "GetUsage": "a read",
    "ScrubAssets": "checks the same bytes again, until its first result",
}
# The calls gRPC never retries, and why.
NOT_RETRIED: Mapping[str, str] = {
    "UploadAsset": "creates an asset (a resumable upload resumes through QueryUpload)",
    "RegisterFile": "creates an asset",
    "CreateValueAsset": "creates an asset",
    "CreatePendingAsset": "creates a promise",
    "GetOrCreatePendingAsset": (
        "a repeat of a PRODUCE whose answer was lost would say JOIN, and nobody would "
        "produce (give the promise a lease: once it runs out, the next call takes over)"
    ),
    "DeleteAsset": "a repeat of a delete whose answer was lost would say NOT_FOUND",
    "ReleaseHold": "a repeat of a release whose answer was lost would say NOT_FOUND",
}

# Five attempts (gRPC's most) after backoffs of about 1, 2, 4 and 8 s (gRPC jitters each by
# up to 20%): a safe call rides out an outage of some 12-18 s, within its deadline.
RETRY_POLICY: Mapping[str, Any] = {
    "maxAttempts": 5,
    "initialBackoff": "1s",
    "maxBackoff": "8s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    """The channel's service config (JSON): RETRY_POLICY for each call in RETRIED."""
    names = [{"service": SERVICE, "method": m} for m in RETRIED]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", service_config()),
    # gRPC waits up to 120 s between reconnections to a server that was down long; a
    # retried call would find the channel still waiting though the server is back.
    ("grpc.max_reconnect_backoff_ms", 5000),
)

# A watch waits on a connection it sends nothing on: one that a NAT, a firewall or a
# partition dropped without a FIN or RST would be waited on for ever (TCP only notices a
# dead peer when it has something to send). While a call is open the client pings every
# KEEPALIVE_TIME_MS and drops a connection whose ping is not answered within
# KEEPALIVE_TIMEOUT_MS: the call ends UNAVAILABLE, and a watch resumes on a new one. The
# server refuses pings more often than every 10 s (GOAWAY too_many_pings: server.py).
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 20_000


def keepalive_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # gRPC 1.85 times a keepalive ping's answer by this one (60 s unless given).
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),  # an idle channel needs no pings
        # gRPC stops pinging after two pings with no data sent; a watch sends none.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_options(extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """CHANNEL_OPTIONS and the keepalive's, each replaced by the caller's of the same name."""
    given = dict(extra)
    ours = [*CHANNEL_OPTIONS, *keepalive_options()]
    return [*((k, v) for k, v in ours if k not in given), *given.items()]


TokenSource = Callable[[], str]


class _TokenPlugin(grpc.AuthMetadataPlugin):
    """Asks `source` for a token before each call (a token that gets refreshed)."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            token = self._source()
        except Exception as exc:  # reported as the call's error
            callback((), exc)
            return
        callback((("authorization", f"Bearer {token}"),), None)


class TokenFile:
    """A token read from a file before each call, so a refreshed file is used at once.

    A file that cannot be read later (e.g. between the two steps of a replacement) leaves
    the last token read in use, with a warning: a failing credentials plugin would fail
    the call as UNAVAILABLE, which the channel retries for nothing.
    """

    def __init__(self, path: str, variable: str) -> None:
        self.path = path
        self.variable = variable
        self._last = self._read()  # refuse a missing or empty file now, not at a call

    def _read(self) -> str:
        try:
            token = Path(self.path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{self.variable}={self.path}: cannot read it: {exc}") from exc
        if not token:
            raise ValueError(f"{self.variable}={self.path}: the file is empty")
        return token

    def __call__(self) -> str:
        try:
            self._last = self._read()
        except ValueError as exc:
            log.warning("%s; sending the token read before", exc)
        return self._last


def channel_credentials(
    credentials: grpc.ChannelCredentials | None,
    *,
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
    token: str | TokenSource | None,
) -> grpc.ChannelCredentials | None:
    """The channel's credentials: TLS (and a client certificate), plus a bearer token.

    None means a plaintext channel. A token without TLS goes only to a loopback address
    (grpc's local credentials), never in clear over a network.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError(
            "certificate_chain and private_key go together: give both or neither "
            f"(or both of {ENV_CLIENT_CERT} and {ENV_CLIENT_KEY})"
        )
    given = {
        "root_certificates": root_certificates,
        "certificate_chain": certificate_chain,
        "private_key": private_key,
    }
    for name, data in given.items():
        if data is not None and not is_pem(data):
            raise ValueError(f"{name}: {NOT_PEM}")
    wants_tls = tls or root_certificates is not None or certificate_chain is not None
    if credentials is not None and wants_tls:
        raise ValueError("give either credentials or the TLS arguments, not both")
    if credentials is None and wants_tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates, private_key, certificate_chain
        )
    if token is None:
        return credentials
    if credentials is None:
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    call = (
        grpc.access_token_call_credentials(token)
        if isinstance(token, str)
        else grpc.metadata_call_credentials(_TokenPlugin(token))
    )
    return grpc.composite_channel_credentials(credentials, call)


@dataclass(frozen=True)
class Settings:
    """What a client connects to and with, from its arguments or else the environment."""

    target: str
    timeout: float | None
    credentials: grpc.ChannelCredentials | None


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _read(environ: Mapping[str, str], name: str) -> bytes | None:
    path = _env(environ, name)
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{name}={path}: cannot read it: {exc}") from exc
    if not is_pem(data):
        raise ValueError(f"{name}={path}: {NOT_PEM}")
    return data


# gRPC takes any bytes, then fails each connection (after the call's retries, with error
# lines of its own on stderr): a file that is no PEM is refused when the client is made.
NOT_PEM = "no PEM block (-----BEGIN ...-----) in it"


def is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def check_timeout(timeout: float | None, what: str = "timeout") -> float | None:
    """A deadline in seconds (None: none), refused unless it is a positive number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, not {timeout!r}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"{what} must be more than 0 seconds (None: no deadline), not {timeout}")
    return float(timeout)


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    text = _env(environ, name)
    if text is None or text.lower() in _FALSE:
        return False
    if text.lower() in _TRUE:
        return True
    raise ValueError(f"{name}={text!r} is not a boolean (1/0, true/false, yes/no, on/off)")


def _env_timeout(environ: Mapping[str, str]) -> float:
    text = _env(environ, ENV_TIMEOUT)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{ENV_TIMEOUT}={text!r} is not a number of seconds") from None
    timeout = check_timeout(seconds, ENV_TIMEOUT)
    assert timeout is not None
    return timeout


def _env_token(environ: Mapping[str, str]) -> str | TokenSource | None:
    token, path = _env(environ, ENV_TOKEN), _env(environ, ENV_TOKEN_FILE)
    if token is not None and path is not None:
        raise ValueError(f"both {ENV_TOKEN} and {ENV_TOKEN_FILE} are set: unset one of them")
    if path is not None:
        return TokenFile(path, ENV_TOKEN_FILE)
    return token


def resolve(
    target: str | None,
    timeout: float | object | None,
    *,
    credentials: grpc.ChannelCredentials | None,
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None,
    private_key: bytes | None,
    token: str | TokenSource | None,
    own_channel: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Each setting from its argument, or else from its ASSET_SERVICE_* variable.

    `timeout` is UNSET when not given (None means no deadline). Given `credentials`,
    the TLS variables are not read (they would contradict them), but a token still is.
    Without `own_channel` (the caller brings a channel) no credentials are made.
    """
    env = os.environ if environ is None else environ
    target = target or _env(env, ENV_ADDR) or DEFAULT_TARGET
    chosen: float | None
    if timeout is UNSET:
        chosen = _env_timeout(env)
    else:
        assert timeout is None or isinstance(timeout, int | float)
        chosen = check_timeout(timeout)
    if not own_channel:
        return Settings(target, chosen, None)
    if credentials is None:
        tls = tls or _env_flag(env, ENV_TLS)
        if root_certificates is None:
            root_certificates = _read(env, ENV_CA_FILE)
        if certificate_chain is None and private_key is None:
            certificate_chain = _read(env, ENV_CLIENT_CERT)
            private_key = _read(env, ENV_CLIENT_KEY)
    if token is None:
        token = _env_token(env)
    wants_tls = tls or root_certificates is not None or certificate_chain is not None
    if token is not None and credentials is None and not wants_tls:
        _check_loopback(target)
    creds = channel_credentials(
        credentials,
        tls=tls,
        root_certificates=root_certificates,
        certificate_chain=certificate_chain,
        private_key=private_key,
        token=token,
    )
    return Settings(target, chosen, creds)


def _check_loopback(target: str) -> None:
    """Refuse at once a token without TLS for an IP address that is not a loopback one:
    gRPC's local credentials would refuse every connection to it, and the call would
    end, after its retries, in an obscure UNAVAILABLE. A host name is left to gRPC."""
    address = target
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        address = address.removeprefix(scheme)
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    else:
        host = address.rpartition(":")[0] if address.count(":") == 1 else address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return
    if not ip.is_loopback:
        raise ValueError(
            f"a token is sent without TLS only to a loopback address, and {target} is not "
            f"one: turn TLS on ({ENV_TLS}=1, or a CA file with {ENV_CA_FILE}), or give no token"
        )
